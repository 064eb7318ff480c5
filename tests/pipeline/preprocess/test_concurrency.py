"""Concurrent jobs on one dataset (on the moto S3 server) never lose each other's work.

Jobs run as separate processes, released together from a barrier, compacting after every commit (the most
contention): two preprocess runs at once, then preprocess + repatch + stats at once. The final dataset equals
the one the same jobs produce one after the other: same units, same entropies, same patch sets, nothing lost or
duplicated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from blt_model.patching import PatchingParams
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import iter_batches
from pipeline.io.storage import exists, join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch

REPO = Path(__file__).resolve().parents[3]

JOB = """
import os, sys, time
from pathlib import Path
from blt_model.patching import PatchingParams
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import CommitPolicy, run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch
from pipeline.stats.aggregate import compute_stats, write_stats

kind, barrier, bucket, root, arg = sys.argv[1:6]
Path(barrier, f"ready-{os.getpid()}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.01)
policy = CommitPolicy(every=1, seconds=0.0, final_wait=30.0)
if kind == "preprocess":
    run_preprocess(PreprocessConfig(inputs=f"{bucket}/raw/{arg}", output=root, entropy_model=f"{bucket}/em",
                                    span=64, use_ray=False), policy)
elif kind == "repatch":
    run_repatch(RepatchConfig(root, PatchingParams(threshold=float(arg)), use_ray=False), policy)
else:
    write_stats(root, compute_stats(root, use_ray=False, examples=False))
"""


def _content(root: str) -> dict:
    """Everything a reader sees, by unit: entropy rows, and per patch set its patch rows."""
    manifest = Manifest.load(root)
    out = {"totals": manifest.totals(), "default": manifest.default_patch_set,
           "sets": sorted(manifest.patch_sets)}
    for key, record in sorted(manifest.shards.items()):
        out[key] = [b.to_pydict() for b in iter_batches(join(root, record.output), "entropies")]
    for name, patch_set in sorted(manifest.patch_sets.items()):
        assert set(patch_set.shards) == set(manifest.shards), f"patch set {name} misses units"
        out[name] = {k: [b.to_pydict() for b in iter_batches(join(root, v["output"]), "patches")]
                     for k, v in sorted(patch_set.shards.items())}
    return out


def _run_together(jobs: list[tuple[str, ...]], barrier: Path) -> None:
    barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLT_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", JOB, *job], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for job in jobs]
    deadline = time.time() + 120
    while len(list(barrier.glob("ready-*"))) < len(procs) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll()]
        time.sleep(0.05)
    (barrier / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]


@pytest.fixture
def inputs(bucket):
    save_tiny_entropy_model(f"{bucket}/em")
    for name, seed in (("a0", 0), ("a1", 1), ("b0", 3)):
        write_object(f"{bucket}/raw/{name}.jsonl", jsonl_bytes(make_docs(seed, 15)))
    return bucket


def _preprocess(bucket: str, root: str, pattern: str) -> None:
    run_preprocess(PreprocessConfig(inputs=f"{bucket}/raw/{pattern}", output=root, entropy_model=f"{bucket}/em",
                                    span=64, use_ray=False))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_preprocess_runs_at_once_equal_sequential_runs(inputs, tmp_path):
    bucket = inputs
    _preprocess(bucket, f"{bucket}/seq", "a*.jsonl")
    _preprocess(bucket, f"{bucket}/seq", "*.jsonl")
    _run_together([("preprocess", str(tmp_path / "barrier"), bucket, f"{bucket}/par", "a*.jsonl"),
                   ("preprocess", str(tmp_path / "barrier"), bucket, f"{bucket}/par", "*.jsonl")],
                  tmp_path / "barrier")
    parallel = _content(f"{bucket}/par")
    assert parallel == _content(f"{bucket}/seq")
    assert parallel["totals"]["shards"] == 3 and parallel["totals"]["docs"] == 45
    # Whatever the interleaving, a final compaction leaves manifest.json holding everything.
    manifest = Manifest.load(f"{bucket}/par")
    manifest.save()
    assert _content(f"{bucket}/par") == parallel


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_preprocess_repatch_and_stats_at_once_equal_sequential_runs(inputs, tmp_path):
    bucket = inputs
    for root in (f"{bucket}/seq", f"{bucket}/par"):
        _preprocess(bucket, root, "a*.jsonl")
    _preprocess(bucket, f"{bucket}/seq", "*.jsonl")
    run_repatch(RepatchConfig(f"{bucket}/seq", PatchingParams(threshold=2.0), use_ray=False))
    barrier = str(tmp_path / "barrier")
    _run_together([("preprocess", barrier, bucket, f"{bucket}/par", "*.jsonl"),
                   ("repatch", barrier, bucket, f"{bucket}/par", "2.0"),
                   ("stats", barrier, bucket, f"{bucket}/par", "-")], tmp_path / "barrier")
    parallel = _content(f"{bucket}/par")
    assert len(parallel["sets"]) == 2 and parallel["totals"]["shards"] == 3
    assert parallel == _content(f"{bucket}/seq")
    assert exists(f"{bucket}/par/stats.json")
