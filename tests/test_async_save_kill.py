"""An async checkpoint save killed midway: ``latest.json`` stays on the last committed step and a re-run resumes
from it onto the uninterrupted run's losses.

The run is a subprocess with a one-process gloo group, so ``dcp.async_save`` runs for real (staged to memory,
written by DCP's background thread while training goes on); the drill SIGKILLs the whole process from inside that
background write, after the step's shards and before DCP's ``.metadata``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from corpus import jsonl_bytes, make_docs, write_object

from training.config import EntropyTrainConfig
from training.entropy_loop import run_entropy_training
from training.metrics import read_metrics, read_metrics_log

ROOT = Path(__file__).resolve().parent.parent

# One worker in a real (one-process) gloo group: what a Ray Train worker has, without Ray.
SCRIPT = """
import json, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method=sys.argv[2], rank=0, world_size=1)
from training.config import EntropyTrainConfig
from training.entropy_loop import run_entropy_training
run_entropy_training(EntropyTrainConfig(**json.loads(sys.argv[1])), use_ray=False)
dist.destroy_process_group()
"""


def _run(cfg: EntropyTrainConfig, rendezvous: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(asdict(cfg)), f"file://{rendezvous}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_async_save_killed_midway_keeps_the_last_commit_and_resumes_exactly(tmp_path):
    write_object(str(tmp_path / "raw" / "a.jsonl"), jsonl_bytes(make_docs(3, 80)))
    common = dict(inputs=str(tmp_path / "raw" / "*.jsonl"), steps=8, seq_len=32, batch_size=2, log={"every": 1},
                  eval={"every": 100, "validation_fraction": 0.0}, checkpoint={"every": 3, "async_save": True})
    run_entropy_training(EntropyTrainConfig(output=str(tmp_path / "straight"), **common), use_ray=False)
    reference = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "straight"))}
    assert sorted(reference) == list(range(1, 9))

    # Saves at 3 and 6 are async: step 3 commits when step 6's save starts; step 6's background write is killed.
    output = tmp_path / "killed"
    cfg = EntropyTrainConfig(output=str(output), drills={"kill_in_async_save": 6}, **common)
    killed = _run(cfg, tmp_path / "pg-1")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (output / "faults" / "killed-async-save-step-6").exists()
    checkpoints = output / "checkpoints"
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 3
    assert (checkpoints / "step-00000003" / ".metadata").exists()
    partial = {p.name for p in (checkpoints / "step-00000006").iterdir()}
    assert ".metadata" not in partial and any(name.endswith(".distcp") for name in partial), partial
    drill = [line for line in killed.stderr.splitlines() if "killed inside the async save of step 6" in line]
    assert len(drill) == 1 and "MainThread" not in drill[0], drill  # DCP's writer thread, not the training loop
    assert max(r["step"] for r in read_metrics_log(str(output))) >= 6  # flushed at checkpoint 6, before the kill

    # The same command again (the drill fires once): resumes from step 3, finishes, commits step 8 at the end.
    resumed = _run(cfg, tmp_path / "pg-2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 3" in resumed.stderr
    losses = {r["step"]: r["loss"] for r in read_metrics(str(output))}
    assert sorted(losses) == list(range(1, 9))
    for step in range(1, 9):
        assert losses[step] == pytest.approx(reference[step], abs=1e-5), step
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 8
    assert (checkpoints / "step-00000006" / ".metadata").exists()  # the partial step was rewritten whole
    assert (output / "model.safetensors").exists()
