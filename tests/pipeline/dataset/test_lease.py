"""The compaction lease under races, on the moto S3 server and on a local disk.

* conditional writes: create only if absent, replace / delete only on the version read (S3 If-None-Match /
  If-Match; local flock), on moto directly and on local files;
* processes released together at an expired lease: exactly one takes it over;
* compactions slowed past the lease time keep it (background renewal): never two at once, nothing dropped.

moto honours If-None-Match / If-Match but checks without a lock, so the race tests go through the fault proxy
with ``serialize_conditional`` (AWS S3's atomic conditional writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.dataset import manifest as manifest_module
from pipeline.dataset.manifest import LEASE_PATH, Manifest, ShardRecord
from pipeline.io.storage import delete_conditional, join, put_conditional, read_versioned

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def conditional_proxy(s3_endpoint, monkeypatch):
    import s3fs
    from fault_proxy import FaultProxy

    with FaultProxy(s3_endpoint, serialize_conditional=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        yield proxy
    s3fs.S3FileSystem.clear_instance_cache()


def _check_conditional_writes(root: str) -> None:
    url = join(root, "x", "obj.json")
    assert read_versioned(url) is None
    first = put_conditional(url, b"one")
    assert first and put_conditional(url, b"two") is None  # exists: create fails
    assert read_versioned(url).data == b"one"
    assert put_conditional(url, b"two", if_match="0" * 32) is None  # wrong version
    second = put_conditional(url, b"two", if_match=first)
    assert second and second != first and read_versioned(url).etag == second
    assert not delete_conditional(url, first)
    assert delete_conditional(url, second) and read_versioned(url) is None
    assert put_conditional(url, b"three", if_match=second) is None  # gone: nothing to replace


def test_conditional_writes_local(tmp_path):
    _check_conditional_writes(str(tmp_path))


def test_conditional_writes_on_moto(bucket):
    _check_conditional_writes(bucket)


def test_lease_held_skipped_expired_taken_over_on_s3(bucket, monkeypatch):
    monkeypatch.setattr(manifest_module, "LEASE_SECONDS", 30.0)
    a, b = manifest_module._Lease(bucket), manifest_module._Lease(bucket)
    assert a.acquire() and not b.acquire() and b.holder == a.owner
    a._stop.set()  # a dies: no renewal, and its lease expires
    monkeypatch.setattr(manifest_module, "LEASE_SECONDS", 0.2)
    a.renew()
    time.sleep(0.3)
    assert b.acquire()
    with pytest.raises(manifest_module.LeaseLost):
        a.renew()  # the fence: a cannot write any more
    b.release()
    assert read_versioned(join(bucket, LEASE_PATH)) is None


RACE = """
import json, os, sys, time
from pathlib import Path
from pipeline.dataset import manifest as m

barrier, root, out = sys.argv[1:4]
Path(barrier, f"ready-{os.getpid()}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.005)
lease = m._Lease(root)
won = lease.acquire()
lease._stop.set()  # keep it (no release, no renewal): a late contender must still find it held
Path(out, f"{os.getpid()}.json").write_text(json.dumps({"won": won, "owner": lease.owner}))
"""

SLOW = """
import json, os, sys, time
from pathlib import Path
from pipeline.dataset import manifest as m

barrier, root, out, name, slow = sys.argv[1:6]
held = []
acquire, release = m._Lease.acquire, m._Lease.release

def timed_acquire(self):
    ok = acquire(self)
    if ok:
        self.t0 = time.time()
    return ok

def timed_release(self):
    held.append((self.t0, time.time()))
    release(self)

m._Lease.acquire, m._Lease.release = timed_acquire, timed_release
if slow == "1":
    write, slowed = m.write_bytes_atomic, []
    def slow_write(url, data):
        if url.endswith(m.MANIFEST_NAME) and not slowed:
            slowed.append(url)
            time.sleep(3 * m.LEASE_SECONDS)  # this compaction outlives its lease three times
        write(url, data)
    m.write_bytes_atomic = slow_write
Path(barrier, f"ready-{os.getpid()}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.005)
manifest = m.Manifest.load(root)
compacted = 0
for i in range(4):
    key = f"{name}-{i}"
    manifest.commit_unit({"input_url": key, "size": 1, "etag": "e", "output": key, "docs": 1, "bytes": 1,
                          "skips": {}, "seconds": 0.0})
    compacted += manifest.compact()
compacted += manifest.compact(wait=60.0)  # the end of a job: wait for the others' compactions
Path(out, f"{name}.json").write_text(json.dumps({"held": held, "compacted": compacted}))
"""


def _run_released_together(script: str, argv: list[list[str]], tmp_path: Path, env: dict) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(barrier), *args], cwd=REPO,
                              env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in argv]
    deadline = time.time() + 60
    while len(list(barrier.glob("ready-*"))) < len(procs) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll()]
        time.sleep(0.05)
    (barrier / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]


@pytest.mark.timeout(100)
def test_processes_racing_for_an_expired_lease_one_wins(bucket, conditional_proxy, tmp_path):
    root = f"{bucket}/ds"
    put_conditional(join(root, LEASE_PATH), json.dumps({"owner": "dead-job", "expires": time.time() - 1}).encode())
    out = tmp_path / "out"
    out.mkdir()
    _run_released_together(RACE, [[root, str(out)]] * 5, tmp_path, {})
    results = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(results) == 5 and sum(r["won"] for r in results) == 1
    assert conditional_proxy.conditional >= 5  # every contender went through a conditional write
    winner = next(r["owner"] for r in results if r["won"])
    assert json.loads(read_versioned(join(root, LEASE_PATH)).data)["owner"] == winner


@pytest.mark.timeout(100)
def test_compactions_slowed_past_the_lease_never_overlap_nothing_dropped(bucket, conditional_proxy, tmp_path):
    root = f"{bucket}/ds"
    Manifest(root=root).compact()
    out = tmp_path / "out"
    out.mkdir()
    names = ["slow", "a", "b"]
    _run_released_together(SLOW, [[root, str(out), n, "1" if n == "slow" else "0"] for n in names], tmp_path,
                           {"BLT_LEASE_SECONDS": "2.0"})
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in names}
    assert results["slow"]["compacted"] >= 1  # renewed in the background: kept its lease for 3 lease times
    assert max(end - start for start, end in results["slow"]["held"]) > 6.0
    held = sorted(tuple(h) for r in results.values() for h in r["held"])
    for (_, end), (start, _) in zip(held, held[1:]):
        assert end <= start, f"two compactions at once: {held}"
    expected = {f"{n}-{i}" for n in names for i in range(4)}
    assert set(Manifest.load(root).shards) == expected
    final = Manifest.load(root)
    assert final.compact()
    assert set(json.loads(read_versioned(join(root, "manifest.json")).data)["shards"]) == expected
    assert isinstance(final.shards["a-0"], ShardRecord)
