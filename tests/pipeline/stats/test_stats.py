"""Dataset statistics against a hand-computable dataset, and the dashboard in a real headless browser."""

from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
import pytest

from blt_model.patching import PatchingParams
from pipeline.dataset.layout import input_url_of
from pipeline.dataset.manifest import Manifest, PatchSetRecord, ShardRecord
from pipeline.dataset.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_batch, patch_schema
from pipeline.io.storage import join
from pipeline.stats.aggregate import SWEEP, SourceGrouping, compute_stats, write_stats

PARAMS = PatchingParams(threshold=1.5)
SHARDS = {
    "mem://a.jsonl": [("ab", b"ab", [1.0, 3.0], [1, 1]), ("a1", b"a1 ", [0.5, 2.0, 4.0], [1, 1, 1])],
    "mem://b.jsonl": [("e", "é".encode(), [5.0, 0.25], [1, 1])],
}


def build_dataset(root: str, shards: dict, skips: dict | None = None, batch_rows: int | None = None) -> str:
    """A dataset written by hand: ``shards`` maps a unit key to rows ``(doc_id, part, bytes, entropies,
    patch_lengths[, continues])``; ``batch_rows`` splits every shard into record batches of that many rows."""
    manifest = Manifest(root=root, entropy_model={"id": "hand", "url": "none"})
    patch_set = PatchSetRecord(params=PARAMS.to_dict())
    for i, (key, rows) in enumerate(shards.items()):
        ent_rel, pat_rel = f"entropies/part-{i}.arrow", f"patches/{PARAMS.key()}/part-{i}.arrow"
        ent_writer = ShardWriter(join(root, ent_rel), ENTROPY_SCHEMA)
        pat_writer = ShardWriter(join(root, pat_rel), patch_schema(PARAMS.to_dict()))
        step = batch_rows or len(rows)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            batch = entropy_batch([r[0] for r in chunk], [key] * len(chunk), list(range(len(chunk))),
                                  [r[1] for r in chunk], [r[2] for r in chunk],
                                  np.concatenate([r[3] for r in chunk]).astype(np.float16))
            ent_writer.write(batch)
            pat_writer.write(patch_batch(batch.column("doc_id"), np.concatenate([r[4] for r in chunk]),
                                         np.array([len(r[4]) for r in chunk]), PARAMS.to_dict(),
                                         np.array([bool(r[5]) if len(r) > 5 else False for r in chunk])))
        ent_writer.close()
        pat_writer.close()
        nbytes = sum(len(r[2]) for r in rows)
        docs = sum(1 for r in rows if r[1] == 0)
        counts = (skips or {}).get(key, {})
        manifest.shards[key] = ShardRecord(key, nbytes, "x", ent_rel, docs, nbytes, {"counts": counts}, 0.0)
        patch_set.shards[key] = {"output": pat_rel, "docs": docs, "bytes": nbytes,
                                 "patches": int(sum(len(r[4]) for r in rows))}
    manifest.patch_sets[PARAMS.key()] = patch_set
    manifest.default_patch_set = PARAMS.key()
    manifest.save()
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    rows = {url: [(d[0], 0, d[1], d[2], d[3]) for d in docs] for url, docs in SHARDS.items()}
    return build_dataset(str(tmp_path / "ds"), rows, skips={"mem://a.jsonl": {"invalid_json": 2}})


def _check_values(stats: dict) -> None:
    totals = stats["totals"]
    assert (totals["docs"], totals["bytes"], totals["patches"], totals["shards"]) == (3, 7, 7, 2)
    assert totals["avg_patch_size"] == pytest.approx(1.0)
    assert totals["skipped"] == {"invalid_json": 2}
    counts = stats["histograms"]["entropy"]["counts"]
    assert {i: c for i, c in enumerate(counts) if c} == {2: 1, 5: 1, 10: 1, 20: 1, 30: 1, 40: 1, 50: 1}
    assert stats["histograms"]["doc_length"]["counts"][1] == 3  # lengths 2, 3, 2 fall in [2, 4)
    classes = stats["byte_classes"]
    assert classes["letters"]["bytes"] == 3 and classes["letters"]["mean_entropy"] == pytest.approx(1.5)
    assert classes["digits"]["mean_entropy"] == pytest.approx(2.0)
    assert classes["whitespace"]["mean_entropy"] == pytest.approx(4.0)
    assert classes["utf8_multibyte"]["mean_entropy"] == pytest.approx(2.625)
    assert classes["punctuation"]["bytes"] == 0
    patch_set = stats["patch_sets"][PARAMS.key()]
    assert patch_set["length_hist"][1] == 7 and sum(patch_set["length_hist"]) == 7
    assert patch_set["patches_per_doc"] == pytest.approx(7 / 3)
    sweep = stats["threshold_sweep"]
    # Always-on patches: 2 per document; the only score that can start one is 2.0 (doc "a1 ", position 1).
    at = {round(t, 2): (a, p) for t, a, p in zip(sweep["threshold"], sweep["avg_patch_size"], sweep["patches_per_doc"])}
    assert at[1.5] == pytest.approx((7 / 7, 7 / 3))
    assert at[2.5] == pytest.approx((7 / 6, 6 / 3))
    assert len(sweep["threshold"]) == len(SWEEP)
    assert stats["shards"]["mem://a.jsonl"]["patches"][PARAMS.key()] == 5
    assert stats["shards"]["mem://b.jsonl"] | {"patches": None} == {
        "source": "mem://", "docs": 1, "bytes": 2, "skipped": {}, "patches": None}
    # Both inputs sit in the same "directory": one source, the same totals; its example is a document of the
    # median length (2 bytes: "ab" or "e"), the longer-key tie broken by shard order.
    (name, source), = stats["sources"].items()
    assert name == "mem://" and (source["docs"], source["bytes"], source["shards"]) == (3, 7, 2)
    assert source["mean_entropy"] == pytest.approx((1 + 3 + 0.5 + 2 + 4 + 5 + 0.25) / 7)
    assert source["median_doc_length"] == 2 and source["skipped"] == {"invalid_json": 2}
    assert source["patch_sets"][PARAMS.key()]["avg_patch_size"] == pytest.approx(1.0)
    assert source["entropy_hist"] == stats["histograms"]["entropy"]["counts"]
    example = source["example"]
    assert (example["doc_id"], example["unit_key"], example["length"]) == ("ab", "mem://a.jsonl", 2)
    assert example["bytes"] == list(b"ab") and example["entropies"] == [1.0, 3.0]
    assert example["patch_lengths"][PARAMS.key()] == [1, 1] and stats["example"] == example


def test_stats_match_hand_computed_values(tiny_dataset):
    _check_values(compute_stats(tiny_dataset, use_ray=False))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stats_on_ray_equal_local(tiny_dataset, ray_cluster):
    stats = compute_stats(tiny_dataset, use_ray=True)
    _check_values(stats)
    local = compute_stats(tiny_dataset, use_ray=False)
    assert {k: v for k, v in stats.items() if k not in ("generated", "seconds")} == \
        {k: v for k, v in local.items() if k not in ("generated", "seconds")}


@pytest.mark.timeout(120)
def test_dashboard_renders_in_headless_chromium(tiny_dataset, tmp_path):
    from browser import png_has_content, render_in_chromium

    _, html_url = write_stats(tiny_dataset, compute_stats(tiny_dataset, use_ray=False))
    page = open(html_url).read()  # self-contained: CSS and JS inline, nothing loaded from elsewhere
    assert "<style>" in page and "<script src" not in page and "<link" not in page and "url(" not in page
    attrs, shot = render_in_chromium(html_url, tmp_path / "browser", 1200)
    assert attrs["errors"] == "[]" and attrs["overflow"] == "[]", attrs
    assert int(attrs["rendered"]) == 10  # 3 per-source charts, 6 others, one example document (one source)
    dom = attrs["dom"]
    assert dom.count("<svg") == 9 and dom.count("<rect") > 5 and dom.count("<polyline") >= 5
    assert dom.count("<tr>") >= 8  # tables: sources, byte classes, patch sets, shards, skips
    assert png_has_content(shot)


def test_dashboard_server_on_loopback(tiny_dataset):
    from jobs.dashboard import make_server

    write_stats(tiny_dataset, compute_stats(tiny_dataset, use_ray=False))
    server = make_server(tiny_dataset, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        payload = page.split('<script type="application/json" id="stats">', 1)[1].split("</script>", 1)[0]
        assert "data-rendered" in page and json.loads(payload)["totals"]["docs"] == 3
        assert json.loads(urllib.request.urlopen(base + "/stats.json", timeout=10).read())["totals"]["docs"] == 3
    finally:
        server.shutdown()
        server.server_close()


# A 10-byte document stored as three parts (4 + 4 + 2 bytes) followed by a 3-byte one, in record batches of two
# rows, so the document and one of its patches cross a batch border. Patch rows 1 and 2 continue the previous
# row's last patch: the whole document's patches are 1, 1, 2+2, 2+2 (lengths 1, 1, 4, 4).
LONG_ROWS = [
    ("L", 0, b"abcd", [9.0, 0.5, 3.0, 0.5], [1, 1, 2]),
    ("L", 1, b"efgh", [3.0, 0.5, 0.5, 3.0], [2, 2], True),
    ("L", 2, b"ij", [0.5, 9.0], [2], True),
    ("s", 0, b"xyz", [9.0, 3.0, 9.0], [1, 1, 1]),
]


def test_long_document_parts_count_as_one_document(tmp_path):
    root = build_dataset(str(tmp_path / "ds"), {"mem://raw/long.jsonl": LONG_ROWS}, batch_rows=2)
    stats = compute_stats(root, use_ray=False)
    assert (stats["totals"]["docs"], stats["totals"]["bytes"]) == (2, 13)
    doc_hist = stats["histograms"]["doc_length"]["counts"]
    assert {i: c for i, c in enumerate(doc_hist) if c} == {3: 1, 1: 1}  # 10 bytes in [8, 16), 3 in [2, 4)
    patch_set = stats["patch_sets"][PARAMS.key()]
    assert patch_set["patches"] == 7  # 4 for L (parts joined), 3 for s
    assert {i: c for i, c in enumerate(patch_set["length_hist"]) if c} == {1: 5, 4: 2}
    assert patch_set["avg_patch_size"] == pytest.approx(13 / 7) and patch_set["patches_per_doc"] == pytest.approx(3.5)
    # Sweep: 2 forced patches per whole document; L's eligible scores are all but its very first and very last
    # (the last score of part 1 points at part 2's first byte, across the batch border), s's only its middle one.
    sweep = {round(t, 2): (a, p) for t, a, p in zip(*stats["threshold_sweep"].values())}
    assert sweep[2.5] == pytest.approx((13 / 8, 8 / 2))  # 4 forced + 3 scores of 3.0 in L + 1 in s
    assert sweep[0.25] == pytest.approx((1.0, 13 / 2))  # every eligible score starts a patch: 13 patches
    source = stats["sources"]["mem://raw/"]
    assert source["docs"] == 2 and source["median_doc_length"] == 3
    assert source["example"]["doc_id"] == "s"  # the median-length document, not the first one


@pytest.mark.parametrize(("grouping", "expected"), [
    (SourceGrouping(), {"s3://b/raw/code/": (3, 2), "s3://b/raw/prose/": (1, 1)}),
    (SourceGrouping(group_by="file"), {"s3://b/raw/code/x.parquet": (2, 1), "s3://b/raw/code/y.jsonl": (1, 1),
                                       "s3://b/raw/prose/p.jsonl": (1, 1)}),
    (SourceGrouping.parse(["py=*/x.parquet", "s3://b/raw/"]), {"py": (2, 1), "s3://b/raw/": (2, 2)}),
])
def test_sources_group_units_by_input(tmp_path, grouping, expected):
    """Unit keys of one input (``#rg..``) belong to its input; sources by directory, file or pattern."""
    doc = ("d", 0, b"ab", [1.0, 1.0], [1, 1])
    units = {"s3://b/raw/code/x.parquet#rg0-1": [doc], "s3://b/raw/code/x.parquet#rg1-2": [doc],
             "s3://b/raw/code/y.jsonl": [doc], "s3://b/raw/prose/p.jsonl": [doc]}
    root = build_dataset(str(tmp_path / "ds"), units)
    stats = compute_stats(root, use_ray=False, grouping=grouping, examples=False)
    assert {k: (v["shards"], len({input_url_of(u) for u, s in stats["shards"].items() if s["source"] == k}))
            for k, v in stats["sources"].items()} == expected
    assert sum(v["docs"] for v in stats["sources"].values()) == 4


def test_example_is_near_the_median_length(tmp_path):
    lengths = [1, 5, 6, 7, 300, 2, 6]  # median 6; the first and the smallest are not representative
    rows = [(f"d{i}", 0, b"x" * n, [1.0] * n, [1] * n) for i, n in enumerate(lengths)]
    root = build_dataset(str(tmp_path / "ds"), {"mem://raw/a.jsonl": rows[:3], "mem://raw/b.jsonl": rows[3:]})
    source = compute_stats(root, use_ray=False)["sources"]["mem://raw/"]
    assert source["median_doc_length"] == 6 and source["example"]["length"] == 6
    assert source["example"]["doc_id"] in ("d2", "d6")


def test_stats_cli_groups_sources_by_pattern(tmp_path, capsys):
    from jobs.stats import main

    doc = ("d", 0, b"abc", [1.0, 1.0, 1.0], [1, 2])
    root = build_dataset(str(tmp_path / "ds"), {"mem://raw/code/a.jsonl": [doc], "mem://raw/code/b.jsonl": [doc],
                                                "mem://raw/docs/c.jsonl": [doc]})
    assert main([root, "--no-ray", "--source-pattern", "code=*/code/*", "--group-by", "file"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dashboard"] == join(root, "dashboard.html") and result["totals"]["sources"] == 2
    stats = json.loads(open(result["stats"]).read())
    assert {k: v["docs"] for k, v in stats["sources"].items()} == {"code": 2, "mem://raw/docs/c.jsonl": 1}
    assert stats["grouping"] == {"patterns": [["code", "*/code/*"]], "group_by": "file"}
    assert stats["sources"]["code"]["patch_sets"][PARAMS.key()]["avg_patch_size"] == pytest.approx(1.5)
