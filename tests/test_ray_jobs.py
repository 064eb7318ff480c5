"""Ray fault tolerance and job submission on a loopback cluster.

* a ShardProcessor worker process is SIGKILLed mid-job: Ray restarts the actor, retries the shard, and the
  output equals a clean run;
* the driver itself is killed after some shards are committed: a re-run resumes and ends identical;
* ``ray job submit`` against a ``ray start --head`` cluster on 127.0.0.1 runs the preprocess job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object
from pipeline.manifest import Manifest
from pipeline.preprocess import PreprocessConfig, run_preprocess
from pipeline.shards import iter_batches
from pipeline.storage import join

SHARDS = 6


@pytest.fixture
def dataset_inputs(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for shard in range(SHARDS):
        write_object(str(raw / f"s{shard}.jsonl"), jsonl_bytes(make_docs(shard, 120)))
    save_tiny_entropy_model(str(tmp_path / "em"))
    return tmp_path


def _config(root: Path, output: str, **kw) -> PreprocessConfig:
    return PreprocessConfig(inputs=str(root / "raw" / "*.jsonl"), output=str(root / output),
                            entropy_model=str(root / "em"), span=64, **kw)


def _dataset_content(root: str) -> dict:
    """Everything a reader can see: per input shard, its entropy rows and default patch rows."""
    manifest = Manifest.load(root)
    out = {}
    for url, record in manifest.shards.items():
        ent = [b.to_pydict() for b in iter_batches(join(root, record.output), "entropies")]
        patches = manifest.patch_sets[manifest.default_patch_set].shards[url]
        pat = [b.to_pydict() for b in iter_batches(join(root, patches["output"]), "patches")]
        out[url] = (ent, pat, record.docs, record.bytes)
    return out


def _actor_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::ShardProcessor"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


@pytest.mark.timeout(240)
def test_killed_worker_is_retried_and_output_matches_clean_run(dataset_inputs, ray_cluster):
    clean = run_preprocess(_config(dataset_inputs, "clean", use_ray=False))
    killed: list[int] = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            pids = _actor_pids()
            manifest_file = dataset_inputs / "faulty" / "manifest.json"
            # Kill once the job is under way (at least one actor busy), before it is finished.
            if pids and not (manifest_file.exists() and len(json.loads(manifest_file.read_text())["shards"]) >= SHARDS):
                time.sleep(1.0)
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    faulty = run_preprocess(_config(dataset_inputs, "faulty", num_workers=2, cpus_per_worker=1))
    thread.join(timeout=5)
    assert killed, "the test never found a worker to kill"
    assert len(faulty.shards) == len(clean.shards) == SHARDS
    assert _dataset_content(str(dataset_inputs / "faulty")) == _dataset_content(str(dataset_inputs / "clean"))


DRIVER = """
import sys
from pipeline.preprocess import PreprocessConfig, run_preprocess
root = sys.argv[1]
run_preprocess(PreprocessConfig(inputs=root + "/raw/*.jsonl", output=root + "/resumed", entropy_model=root + "/em",
                                span=64, use_ray=False))
"""


@pytest.mark.timeout(240)
def test_killed_job_rerun_resumes_to_identical_output(dataset_inputs):
    clean = run_preprocess(_config(dataset_inputs, "clean", use_ray=False))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(dataset_inputs)])
    manifest_file = dataset_inputs / "resumed" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest_file.exists() and 1 <= len(json.loads(manifest_file.read_text())["shards"]) < SHARDS:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    partial = json.loads(manifest_file.read_text())
    assert 1 <= len(partial["shards"]) < SHARDS, "the job finished before it could be killed"
    resumed = run_preprocess(_config(dataset_inputs, "resumed", use_ray=False))
    assert set(resumed.shards) == set(clean.shards)
    assert _dataset_content(str(dataset_inputs / "resumed")) == _dataset_content(str(dataset_inputs / "clean"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(300)
def test_ray_job_submit_runs_preprocess(dataset_inputs, tmp_path):
    bin_dir = Path(sys.executable).parent
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay short
    start = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "4",
             "--disable-usage-stats", "--include-dashboard", "true", "--temp-dir", temp,
             # Own agent ports: another Ray instance (the suite's in-process cluster) may hold the defaults.
             "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
             "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port())]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        output = dataset_inputs / "submitted"
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                  sys.executable, "-m", "jobs.preprocess", "--inputs", str(dataset_inputs / "raw" / "*.jsonl"),
                  "--output", str(output), "--entropy-model", str(dataset_inputs / "em"), "--span", "64",
                  "--num-workers", "2"]
        deadline = time.time() + 90
        while True:  # the head's job agent may need a few seconds after `ray start` returns
            proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=240,
                                  cwd=Path(__file__).resolve().parent.parent)
            if "No available agent" not in proc.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout.lower()
        manifest = Manifest.load(str(output))
        assert len(manifest.shards) == SHARDS and manifest.totals()["docs"] == SHARDS * 120
        # The job printed where its outputs are.
        assert str(output / "manifest.json") in proc.stdout
    finally:
        subprocess.run([str(bin_dir / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
