"""Dataset statistics against a hand-computable dataset, and the dashboard in a real headless browser."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import threading
import urllib.request
import zlib

import numpy as np
import pytest

from blt_model.patching import PatchingParams
from pipeline.manifest import Manifest, PatchSetRecord, ShardRecord
from pipeline.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_batch, patch_schema
from pipeline.stats import SWEEP, compute_stats, write_stats
from pipeline.storage import join

PARAMS = PatchingParams(threshold=1.5)
SHARDS = {
    "mem://a.jsonl": [("ab", b"ab", [1.0, 3.0], [1, 1]), ("a1", b"a1 ", [0.5, 2.0, 4.0], [1, 1, 1])],
    "mem://b.jsonl": [("e", "é".encode(), [5.0, 0.25], [1, 1])],
}


@pytest.fixture
def tiny_dataset(tmp_path):
    root = str(tmp_path / "ds")
    manifest = Manifest(root=root, entropy_model={"id": "hand", "url": "none"})
    patch_set = PatchSetRecord(params=PARAMS.to_dict())
    for i, (url, docs) in enumerate(SHARDS.items()):
        ent_rel, pat_rel = f"entropies/part-{i}.arrow", f"patches/{PARAMS.key()}/part-{i}.arrow"
        writer = ShardWriter(join(root, ent_rel), ENTROPY_SCHEMA)
        batch = entropy_batch([d[0] for d in docs], [url] * len(docs), list(range(len(docs))), [0] * len(docs),
                              [d[1] for d in docs], np.concatenate([d[2] for d in docs]).astype(np.float16))
        writer.write(batch)
        writer.close()
        writer = ShardWriter(join(root, pat_rel), patch_schema(PARAMS.to_dict()))
        lengths = np.concatenate([d[3] for d in docs])
        writer.write(patch_batch(batch.column("doc_id"), lengths, np.array([len(d[3]) for d in docs]),
                                 PARAMS.to_dict()))
        writer.close()
        nbytes = sum(len(d[1]) for d in docs)
        skips = {"counts": {"invalid_json": 2}} if i == 0 else {"counts": {}}
        manifest.shards[url] = ShardRecord(url, nbytes, "x", ent_rel, len(docs), nbytes, skips, 0.0)
        patch_set.shards[url] = {"output": pat_rel, "docs": len(docs), "bytes": nbytes, "patches": int(len(lengths))}
    manifest.patch_sets[PARAMS.key()] = patch_set
    manifest.default_patch_set = PARAMS.key()
    manifest.save()
    return root


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
    assert stats["sources"]["mem://a.jsonl"]["patches"][PARAMS.key()] == 5
    assert stats["example"]["doc_id"] == "a1" and stats["example"]["patch_lengths"][PARAMS.key()] == [1, 1, 1]


def test_stats_match_hand_computed_values(tiny_dataset):
    _check_values(compute_stats(tiny_dataset, use_ray=False))


def test_stats_on_ray_equal_local(tiny_dataset, ray_cluster):
    stats = compute_stats(tiny_dataset, use_ray=True)
    _check_values(stats)


def _png_is_not_blank(path) -> bool:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return len(set(pixels[:: max(1, len(pixels) // 5000)])) > 20


@pytest.mark.timeout(120)
def test_dashboard_renders_in_headless_chromium(tiny_dataset, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (the README's test command installs Debian's chromium)")
    _, html_url = write_stats(tiny_dataset, compute_stats(tiny_dataset, use_ray=False))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", f"file://{html_url}"], capture_output=True, text=True,
                         timeout=90).stdout
    assert 'data-errors="[]"' in dom
    rendered = int(dom.split('data-rendered="', 1)[1].split('"', 1)[0])
    assert rendered == 7  # six charts and the example document
    assert dom.count("<svg") == 6 and dom.count("<rect") > 5 and dom.count("<polyline") >= 3
    assert dom.count("<tr>") >= 8  # tables: byte classes, patch sets, shards, skips
    shot = tmp_path / "dashboard.png"
    subprocess.run([browser, *flags, "--hide-scrollbars", "--window-size=1200,1800", f"--screenshot={shot}",
                    f"file://{html_url}"], capture_output=True, timeout=90)
    assert _png_is_not_blank(shot)


def test_dashboard_server_on_loopback(tiny_dataset):
    from jobs.dashboard import make_server

    write_stats(tiny_dataset, compute_stats(tiny_dataset, use_ray=False))
    server = make_server(tiny_dataset, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "data-rendered" in page and '"docs": 3' in page
        assert json.loads(urllib.request.urlopen(base + "/stats.json", timeout=10).read())["totals"]["docs"] == 3
    finally:
        server.shutdown()
        server.server_close()
