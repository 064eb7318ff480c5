"""The dashboard in a real headless Chromium, on a real mixed corpus: Python sources, /usr/share/doc prose and
man pages, scored by a tiny entropy model and re-patched. At a wide and a narrow window: no element sticks out
of its card, no chart label out of its chart, no script error; screenshots are saved under the test's tmp dir.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import pytest
from browser import chromium_binary, png_has_content, render_in_chromium

from blt_model.patching import PatchingParams

WIDTHS = (1400, 480)


def _read_text(path: Path, limit: int) -> str | None:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data[:limit].decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def write_mixed_corpus(directory: Path, per_kind: int = 24, max_doc: int = 6000, seed: int = 0) -> dict[str, int]:
    """jsonl files under ``directory/{code,prose,man}/``, documents from files on this machine; returns docs per kind."""
    rng = random.Random(seed)
    stdlib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    kinds = {
        "code": sorted(stdlib.glob("*.py")),
        "prose": sorted(p for p in Path("/usr/share/doc").glob("*/*") if p.name.split(".")[0] in
                        ("README", "changelog", "NEWS", "copyright", "TODO", "AUTHORS") and p.is_file()),
        "man": sorted(Path("/usr/share/man/man1").glob("*.1.gz")) + sorted(Path("/usr/share/man/man5").glob("*.5.gz")),
    }
    counts = {}
    for kind, paths in kinds.items():
        rng.shuffle(paths)
        docs = []
        for path in paths:
            text = _read_text(path, rng.randint(max_doc // 20, max_doc))
            if text and text.strip():
                docs.append({"id": f"{kind}/{path.name}", "text": text})
            if len(docs) == per_kind:
                break
        counts[kind] = len(docs)
        (directory / kind).mkdir(parents=True, exist_ok=True)
        half = len(docs) // 2
        for i, chunk in enumerate((docs[:half], docs[half:])):
            (directory / kind / f"part-{i}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chunk))
    return counts


def build_mixed_dataset(tmp_path: Path, **corpus) -> str:
    """Preprocess the mixed corpus (no Ray) with a tiny entropy model, add a calibrated patch set; dataset root."""
    from corpus import save_tiny_entropy_model

    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess
    from pipeline.preprocess.repatch import RepatchConfig, run_repatch

    raw = tmp_path / "raw"
    counts = write_mixed_corpus(raw, **corpus)
    assert all(counts.values()), counts
    model = str(tmp_path / "em")
    save_tiny_entropy_model(model)
    root = str(tmp_path / "ds")
    run_preprocess(PreprocessConfig(inputs=str(raw / "*" / "*.jsonl"), output=root, entropy_model=model,
                                    patching=PatchingParams(threshold=2.0), use_ray=False, num_workers=1))
    run_repatch(RepatchConfig(root, PatchingParams(), 4.5, set_default=True, use_ray=False))
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dashboard_layout_on_mixed_corpus_at_two_widths(tmp_path):
    chromium_binary()
    from pipeline.stats.aggregate import compute_stats, write_stats

    root = build_mixed_dataset(tmp_path, per_kind=12, max_doc=5000)
    stats = compute_stats(root, use_ray=False)
    assert set(stats["sources"]) == {str(tmp_path / "raw" / k) + "/" for k in ("code", "prose", "man")}
    for name, source in stats["sources"].items():
        example = source["example"]
        assert example["length"] >= 0.5 * source["median_doc_length"] and example["bytes"], name
        assert len(example["patch_lengths"]) == 2  # both patch sets
    _, html_path = write_stats(root, stats)
    for width in WIDTHS:
        attrs, shot = render_in_chromium(html_path, tmp_path / "browser", width)
        assert attrs["errors"] == "[]", attrs["errors"]
        assert abs(int(attrs["width"]) - width) <= 20, attrs["width"]  # the window size took effect
        assert json.loads(attrs["overflow"]) == [], (width, attrs["overflow"])
        assert int(attrs["checked"]) > 500  # the layout check looked at the page
        # 3 source charts + 3 patch charts + 3 entropy/document charts + 3 example documents
        assert int(attrs["rendered"]) == 12
        dom = attrs["dom"]
        for chart in ("source-entropy", "source-patch-size", "source-doc-length", "patch-lengths", "sweep",
                      "entropy", "byte-classes", "doc-length"):
            assert f'data-chart="{chart}"' in dom, chart
        assert dom.count('class="doc"') == 3
        assert png_has_content(shot), shot
