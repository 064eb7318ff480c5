"""Leaving the stream early never aborts or hangs the interpreter (the prefetch thread stops before exit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import sys, tempfile
    sys.path[:0] = [{root!r}, {tests!r}]  # the repo first: tests/pipeline/ must not stand in for the package
    from patched_datasets import corpus, write_dataset
    from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader

    root = tempfile.mkdtemp()
    write_dataset(root, corpus("a", 3, 300, sizes=(100, 3000)), batch_rows=40)
    loader = PatchedWindowLoader(LoaderConfig(root, seq_len=64, batch_size=2, prefetch=2))
    mode = sys.argv[1]
    if mode == "held":  # an iterator kept alive until interpreter exit, its thread busy reading
        it = iter(loader)
        next(it)
    elif mode == "break":
        for batch in loader:
            break
    elif mode == "raise":
        try:
            for batch in loader:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
    print("finished", mode)
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["held", "break", "raise"])
def test_leaving_the_loop_early_exits_cleanly(tmp_path, mode):
    script = tmp_path / "early_exit.py"
    here = Path(__file__).resolve()
    script.write_text(SCRIPT.format(root=str(here.parents[3]), tests=str(here.parents[2])))
    for _ in range(2 if mode == "held" else 1):  # the abort it guards against was intermittent
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=240,
                              cwd=Path(__file__).resolve().parents[3], env={"OMP_NUM_THREADS": "1", **_env()})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "terminate called" not in proc.stderr
        assert f"finished {mode}" in proc.stdout


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
