"""``blt demo`` ends at the dashboard: one line per stage with its time, the dashboard path and the serve command
last, and nothing else of note on the screen (run with a given entropy model and no BLT training, so it is quick)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import save_tiny_entropy_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_ends_with_the_dashboard(tmp_path):
    model = str(tmp_path / "em")
    save_tiny_entropy_model(model)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "BLT_"))} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "jobs.demo", "--workdir", str(tmp_path / "demo"), "--entropy-model",
                          model, "--train-steps", "0", "--no-ray"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=220)
    assert run.returncode == 0, run.stderr[-3000:]
    dataset = tmp_path / "demo" / "dataset"
    out_lines = run.stdout.strip().splitlines()
    assert out_lines[-2] == f"dashboard: {dataset / 'dashboard.html'}"
    assert out_lines[-1].startswith(f"serve it:  blt dashboard {dataset} --serve")
    assert (dataset / "dashboard.html").stat().st_size > 10_000 and (dataset / "stats.json").exists()
    err_lines = [line for line in run.stderr.splitlines() if line.strip()]
    stage_lines = [line for line in err_lines if re.match(r"\[blt\.demo\] \d/\d ", line)]
    assert [line.split()[2] for line in stage_lines] == ["preprocess", "repatch", "stats"]
    assert all(re.search(r"\s\d+\.\d+s\s", line) for line in stage_lines), stage_lines  # each with its time
    assert "4.5" in stage_lines[1] and "source" in stage_lines[2]
    # One screen: stage lines, the example and the total time, nothing else (no warnings, bars or worker noise).
    assert len(err_lines) + len(out_lines) <= 12, run.stderr + run.stdout
    assert all(line.startswith("[blt.demo] ") for line in err_lines), err_lines
