"""The dashboard in a real headless Chromium, on a real mixed corpus: Python sources, /usr/share/doc prose and
man pages, scored by a tiny entropy model and re-patched. At a wide and a narrow window: no element sticks out
of its card, no chart label out of its chart, no script error; screenshots are saved under the test's tmp dir.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blt_model.patching import PatchingParams

WIDTHS = (1400, 480)


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (the README's test command installs Debian's chromium)")
    return browser


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

    from pipeline.preprocess.driver import PreprocessConfig, run_preprocess
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


def render_in_chromium(html_path: str, out_dir: Path, width: int, height: int = 1600) -> tuple[dict, Path]:
    """(body data-* attributes after the page's script ran, screenshot path) at one window width."""
    browser = _chromium()
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--window-size={width},{height}"]
    dom = subprocess.run([browser, *flags, f"--user-data-dir={out_dir / f'profile-dom-{width}'}", "--dump-dom",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=90).stdout
    body = dom.split("<body", 1)[1].split(">", 1)[0]
    attrs = {k: v.replace("&quot;", '"').replace("&amp;", "&")
             for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', body)}
    shot = out_dir / f"dashboard-{width}.png"
    subprocess.run([browser, *flags, f"--user-data-dir={out_dir / f'profile-shot-{width}'}", f"--screenshot={shot}",
                    f"file://{html_path}"], capture_output=True, timeout=90)
    return attrs | {"dom": dom}, shot


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dashboard_layout_on_mixed_corpus_at_two_widths(tmp_path):
    _chromium()
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
        assert _png_has_content(shot), shot


def _png_has_content(path: Path) -> bool:
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return len(set(pixels[:: max(1, len(pixels) // 5000)])) > 20
