"""Ray fault tolerance and job submission on a loopback cluster.

* ShardProcessor worker processes are SIGKILLed at random points (up to twice): Ray restarts the actor, retries the shard, and the
  output equals a clean run;
* the driver itself is killed after some shards are committed: a re-run resumes and ends identical;
* preprocess and repatch jobs SIGKILLed at random points, several times in a row: the final run ends identical
  to a clean run;
* ``ray job submit`` to a plain ``ray start --head`` cluster on 127.0.0.1 (token auth on), S3 → S3;
* ``ray job submit`` against the local stack (infra/local/up.sh: Ray head + worker node and S3 on 127.0.0.1)
  runs the preprocess job from S3 to S3, with work on both nodes.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object
from ports import free_port

from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import iter_batches
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess

SHARDS = 6


def _write_inputs(root: Path, docs_per_shard: int) -> Path:
    raw = root / "raw"
    raw.mkdir()
    for shard in range(SHARDS):
        write_object(str(raw / f"s{shard}.jsonl"), jsonl_bytes(make_docs(shard, docs_per_shard)))
    save_tiny_entropy_model(str(root / "em"))
    return root


@pytest.fixture
def dataset_inputs(tmp_path):
    return _write_inputs(tmp_path, 120)


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


def _kill_busy_actors(output: Path, killed: list[int], done: threading.Event, rng: random.Random) -> None:
    """Up to two kills, each of a random actor after a random delay, while the job has uncommitted units."""
    while not done.is_set() and len(killed) < 2:
        pids = [p for p in _actor_pids() if p not in killed]
        if pids and len(Manifest.load(str(output)).shards) < SHARDS:
            time.sleep(rng.uniform(0.1, 1.0))
            victim = rng.choice(pids)
            try:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_killed_worker_is_retried_and_output_matches_clean_run(tmp_path, ray_cluster):
    # Units long enough (seconds per actor) that a kill lands while work is in flight; should a run still finish
    # before the killer struck, it runs again into a fresh output (the check needs at least one kill).
    inputs = _write_inputs(tmp_path, 500)
    clean = run_preprocess(_config(inputs, "clean", use_ray=False))
    rng = random.Random(int(os.environ.get("BLT_KILL_SEED", "0")) or None)
    killed: list[int] = []
    for attempt in range(3):
        output = inputs / f"faulty-{attempt}"
        done = threading.Event()
        thread = threading.Thread(target=_kill_busy_actors, args=(output, killed, done, rng), daemon=True)
        thread.start()
        try:
            faulty = run_preprocess(_config(inputs, output.name, num_workers=2, cpus_per_worker=1))
        finally:
            done.set()
            thread.join()
        assert len(faulty.shards) == len(clean.shards) == SHARDS
        assert _dataset_content(str(output)) == _dataset_content(str(inputs / "clean"))
        if killed:
            break
    assert killed, "the test never found a worker to kill"


DRIVER = """
import sys
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
root = sys.argv[1]
run_preprocess(PreprocessConfig(inputs=root + "/raw/*.jsonl", output=root + "/resumed", entropy_model=root + "/em",
                                span=64, use_ray=False))
"""


@pytest.mark.timeout(240)
def test_killed_job_rerun_resumes_to_identical_output(dataset_inputs):
    clean = run_preprocess(_config(dataset_inputs, "clean", use_ray=False))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(dataset_inputs)])
    root = str(dataset_inputs / "resumed")
    deadline = time.time() + 120
    while time.time() < deadline:
        if 1 <= len(Manifest.load(root).shards) < SHARDS:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    partial = Manifest.load(root)
    assert 1 <= len(partial.shards) < SHARDS, "the job finished before it could be killed"
    resumed = run_preprocess(_config(dataset_inputs, "resumed", use_ray=False))
    assert set(resumed.shards) == set(clean.shards)
    assert _dataset_content(str(dataset_inputs / "resumed")) == _dataset_content(str(dataset_inputs / "clean"))


KILLABLE = """
import sys
from blt_model.patching import PatchingParams
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import CommitPolicy, run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch
kind, root, output = sys.argv[1:4]
policy = CommitPolicy(every=2, seconds=0.5)  # compactions often, so kills land inside them too
if kind == "preprocess":
    run_preprocess(PreprocessConfig(inputs=root + "/raw/*.jsonl", output=output, entropy_model=root + "/em",
                                    span=64, batch_bytes=4000, use_ray=False), policy)
elif kind == "repatch":
    run_repatch(RepatchConfig(output, PatchingParams(threshold=2.0), use_ray=False), policy)
else:
    from pipeline.stats.aggregate import compute_stats, write_stats
    write_stats(output, compute_stats(output, use_ray=False))
"""


def _killable(kind: str, root: Path, output: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLT_PROGRESS": "0", "BLT_LEASE_SECONDS": "3"}
    return subprocess.Popen([sys.executable, "-c", KILLABLE, kind, str(root), output], env=env,
                            stderr=subprocess.DEVNULL)


def _timed_run(kind: str, root: Path, output: str) -> float:
    started = time.perf_counter()
    proc = _killable(kind, root, output)
    assert proc.wait(timeout=180) == 0
    return time.perf_counter() - started


def _patch_rows(root: str, key: str) -> dict:
    manifest = Manifest.load(root)
    return {url: [b.to_pydict() for b in iter_batches(join(root, entry["output"]), "patches")]
            for url, entry in sorted(manifest.patch_sets[key].shards.items())}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_anywhere_several_times_then_identical(dataset_inputs):
    """SIGKILL the preprocess job (3 times), then the repatch job (2 times), then the stats job (2 times), at
    random points; the run after each completes, and everything a reader sees equals a clean run."""
    rng = random.Random(int(os.environ.get("BLT_KILL_SEED", "0")) or None)
    clean, killed = str(dataset_inputs / "clean"), str(dataset_inputs / "killed")
    clean_seconds = _timed_run("preprocess", dataset_inputs, clean)
    repatch_seconds = _timed_run("repatch", dataset_inputs, clean)
    stats_seconds = _timed_run("stats", dataset_inputs, clean)
    for kind, seconds, kills in (("preprocess", clean_seconds, 3), ("repatch", repatch_seconds, 2),
                                 ("stats", stats_seconds, 2)):
        for _ in range(kills):
            proc = _killable(kind, dataset_inputs, killed)
            time.sleep(rng.uniform(0.3, 1.0) * seconds)  # from start-up to the last commit
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _timed_run(kind, dataset_inputs, killed) > 0
    assert _dataset_content(killed) == _dataset_content(clean)
    key = PreprocessConfig("", "", "").patching.key()
    manifest = Manifest.load(killed)
    assert sorted(manifest.patch_sets) == sorted(Manifest.load(clean).patch_sets)
    for name in manifest.patch_sets:
        assert _patch_rows(killed, name) == _patch_rows(clean, name)
    assert key in manifest.patch_sets and len(manifest.shards) == SHARDS

    def stats_of(root: str) -> dict:  # everything but when and how fast it ran
        stats = json.loads(Path(root, "stats.json").read_text())
        return {k: v for k, v in stats.items() if k not in ("generated", "seconds", "dataset")}

    assert stats_of(killed) == stats_of(clean)
    assert Path(killed, "dashboard.html").read_text().count("<script") >= 1


REPO = Path(__file__).resolve().parent.parent


def _submit(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run `ray job submit ...`, retrying while the head's job agent is still starting (a few seconds)."""
    deadline = time.time() + 90
    while True:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        if "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(2)


@pytest.fixture
def local_stack(tmp_path):
    """infra/local/up.sh: a loopback Ray head + 1 worker node and an S3 server; down.sh afterwards."""
    env = {**os.environ, "BLT_STACK_DIR": str(tmp_path / "stack"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    up = subprocess.run([str(REPO / "infra/local/up.sh"), "--workers", "1", "--cpus", "2"], env=env,
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr[-3000:]
    for line in up.stdout.splitlines():
        for assignment in line.removeprefix("export ").split():
            key, value = assignment.split("=", 1)
            env[key] = value
    # Job supervisors resolve "their" cluster from <temp_dir>/ray_current_cluster; without it Ray picks any GCS
    # process it sees in `ps`, e.g. this test session's own cluster.
    try:
        ray_temp = Path(env["BLT_STACK_DIR"], "ray_temp").read_text().strip()
        assert Path(ray_temp, "ray_current_cluster").read_text().strip() == env["RAY_ADDRESS"]
        yield env
    finally:
        down = subprocess.run([str(REPO / "infra/local/down.sh")], env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, down.stderr


@pytest.mark.timeout(400)
def test_ray_job_submit_on_the_local_stack(dataset_inputs, local_stack):
    env = local_stack
    s3 = fsspec.filesystem("s3", key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True)
    bucket = env["BLT_BUCKET"].removeprefix("s3://")
    for path in (dataset_inputs / "raw").iterdir():
        s3.put(str(path), f"{bucket}/raw/{path.name}")
    s3.put(str(dataset_inputs / "em"), f"{bucket}/em", recursive=True)
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--", sys.executable, "-m",
              "jobs.preprocess", "--inputs", f"s3://{bucket}/raw/*.jsonl", "--output", f"s3://{bucket}/ds",
              "--entropy-model", f"s3://{bucket}/em", "--span", "64", "--num-workers", "2",
              "--cpus-per-worker", "2"]
    proc = _submit(submit, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()
    assert f"s3://{bucket}/ds/manifest.json" in proc.stdout  # the job printed where its outputs are
    manifest = json.loads(s3.cat(f"{bucket}/ds/manifest.json"))
    assert manifest["totals"]["docs"] == SHARDS * 120
    # 2-CPU actors on 2-CPU nodes: both nodes of the stack did work.
    assert len({record["worker"] for record in manifest["shards"].values()}) == 2


def _stop_ray_processes(pattern: str) -> None:
    """Stop one cluster's processes (matched on its temp dir / GCS address) and their children; never `ray stop`,
    which would take down every other Ray instance on this machine, this session's own included."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    pids = set(found)
    for pid in found:
        pids.update(subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split())
    pids.discard(str(os.getpid()))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.2)


def _running(pid: str) -> bool:
    """Alive and not a zombie (a zombie waits for its parent, which may be this process, to reap it)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


@pytest.fixture
def ray_start_head(s3_endpoint):
    """`ray start --head` on 127.0.0.1 with every port chosen here, token auth on, its own temp dir."""
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    gcs_port, dashboard_port = free_port(), free_port()
    # The cluster's own token, passed to `ray start` and to the submitting CLI (never ~/.ray/auth_token, which a
    # fresh machine lacks).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    start = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
             "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
             "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
             "--num-cpus", "4", "--temp-dir", temp_dir, "--disable-usage-stats"]
    try:
        proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
        # The head's node id, from the port files Ray names after it: jobs must land on this node.
        port_file = next(Path(temp_dir, "session_latest").glob("gcs_server_port_*"))
        env["HEAD_NODE_ID"] = port_file.name.rsplit("_", 1)[1]
        yield env
    finally:
        _stop_ray_processes(f"{temp_dir}|127.0.0.1:{gcs_port}")
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(300)
def test_ray_job_submit_to_a_ray_start_head_cluster(tmp_path, bucket, ray_start_head):
    """The documented cluster path: `ray start --head`, then `ray job submit -- python -m jobs.preprocess` S3 → S3."""
    for shard in range(2):
        write_object(f"{bucket}/raw/s{shard}.jsonl", jsonl_bytes(make_docs(shard, 40)))
    save_tiny_entropy_model(f"{bucket}/em")
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--", sys.executable, "-m",
              "jobs.preprocess", "--inputs", f"{bucket}/raw/*.jsonl", "--output", f"{bucket}/ds",
              "--entropy-model", f"{bucket}/em", "--span", "64", "--num-workers", "2"]
    proc = _submit(submit, ray_start_head)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()
    manifest = Manifest.load(f"{bucket}/ds")
    assert sum(record.docs for record in manifest.shards.values()) == 80
    # The job ran on the started head, not on this test session's own Ray instance.
    assert {record.worker for record in manifest.shards.values()} == {ray_start_head["HEAD_NODE_ID"]}
