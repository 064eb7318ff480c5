"""Bookkeeping cost per work unit at 1k, 10k and 100k simulated units (local disk): old vs new.

old: the driver rewrote the whole manifest.json after every unit (what this project did before the commit
     records); measured on a manifest already holding n units, a few commits at each scale.
new: each unit commits one small record (``Manifest.commit_unit``) and ``maybe_compact`` folds them into
     manifest.json once max(1000, units/10) have piled up; measured over the last ``k`` commits of an n-unit
     job (the first n - k are already compacted), compactions included in the amortized columns.

Columns: ms per commit (median / p99 of the commit call alone), amortized ms and driver CPU ms per unit (commit +
the unit's share of compactions, wall and process time), one compaction at that size (s), load =
``Manifest.load`` of the result (s), and the whole job's bookkeeping time estimated from the amortized cost
(old: n * cost(n) / 2, since the old cost grows with the manifest). Goal: flat in n, < 50 ms at 100k.

    python bench/bookkeeping.py [--scales 1000 10000 100000] [--commits 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dataset.manifest import Manifest, PatchSetRecord, ShardRecord  # noqa: E402
from pipeline.io.storage import write_bytes_atomic  # noqa: E402

PATCH_SET = "entropy-t1.33544-1a2fc1e9"
MODEL = {"id": "0123456789abcdef", "url": "s3://bucket/models/em"}


def unit(i: int) -> tuple[ShardRecord, dict]:
    """A realistic record: names, an S3 ETag, a Ray node id, a skip log."""
    key = f"s3://bucket/raw/part-{i:07d}.jsonl.zst"
    shard = ShardRecord(key, 123_456_789, f"{i:032x}", f"entropies/part-{i:016x}.arrow", 4096, 98_765_432,
                        {"counts": {"invalid_json": 1}, "examples": {"invalid_json": [f"{key}:17"]}}, 12.3,
                        "f" * 56)
    patch = {"input_url": key, "output": f"patches/{PATCH_SET}/part-{i:016x}.arrow", "docs": 4096,
             "bytes": 98_765_432, "patches": 21_947_873, "seconds": 1.2}
    return shard, patch


def seeded(root: str, n: int) -> Manifest:
    manifest = Manifest(root=root, entropy_model=MODEL, reader={"text_field": "text"}, default_patch_set=PATCH_SET)
    patch_set = manifest.patch_sets.setdefault(PATCH_SET, PatchSetRecord(params={"mode": "entropy"}))
    for i in range(n):
        shard, patch = unit(i)
        manifest.shards[shard.input_url] = shard
        patch_set.shards[shard.input_url] = patch
    return manifest


def bench_old(n: int, commits: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        manifest = seeded(root, n - commits)
        times = []
        cpu0 = time.process_time()
        for i in range(n - commits, n):
            shard, patch = unit(i)
            started = time.perf_counter()
            manifest.shards[shard.input_url] = shard
            manifest.patch_sets[PATCH_SET].shards[shard.input_url] = patch
            write_bytes_atomic(manifest.url, json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode())
            times.append(time.perf_counter() - started)
        cpu = (time.process_time() - cpu0) / commits
        size = Path(manifest.url).stat().st_size
    return {"median": statistics.median(times), "p99": max(times), "amortized": sum(times) / commits, "cpu": cpu,
            "size": size}


def bench_new(n: int, commits: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        base = seeded(root, n - commits)
        write_bytes_atomic(base.url, json.dumps(base.to_dict(), sort_keys=True).encode())
        manifest = Manifest.load(root)
        times, compactions = [], 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(n - commits, n):
            shard, patch = unit(i)
            started = time.perf_counter()
            manifest.commit_unit(shard, PATCH_SET, patch, {"mode": "entropy"})
            times.append(time.perf_counter() - started)
            compactions += manifest.maybe_compact(every=1000, seconds=1e9)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        # One more compaction, timed: a job pays one per max(1000, n/10) commits; add its share per unit.
        shard, patch = unit(n)
        manifest.commit_unit(shard, PATCH_SET, patch, {"mode": "entropy"})
        started, cpu_started = time.perf_counter(), time.process_time()
        manifest.compact()
        compact_wall, compact_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        every = max(1000, n // 10)
        if compactions == 0:  # none fell inside the measured commits: charge the share explicitly
            wall += compact_wall * commits / every
            cpu += compact_cpu * commits / every
        amortized, cpu = wall / commits, cpu / commits
        started = time.perf_counter()
        loaded = Manifest.load(root)
        load = time.perf_counter() - started
        n += 1
        assert len(loaded.shards) == n and asdict(loaded.shards[unit(n - 1)[0].input_url]) == asdict(unit(n - 1)[0])
        size = Path(manifest.url).stat().st_size
    times.sort()
    return {"median": statistics.median(times), "p99": times[int(0.99 * (len(times) - 1))], "amortized": amortized,
            "cpu": cpu, "compaction_s": compact_wall, "load": load, "size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--commits", type=int, default=2000, help="new: commits measured at each scale")
    parser.add_argument("--old-budget", type=float, default=20.0, help="seconds of old-style commits per scale")
    args = parser.parse_args()
    print(f"{'units':>8} {'how':>4} {'commit ms p50':>14} {'p99':>8} {'amortized ms':>13} {'cpu ms/unit':>12} "
          f"{'compact s':>10} {'load s':>7} {'manifest MB':>11} {'job total (est.)':>17}")
    for n in args.scales:
        new = bench_new(n, min(args.commits, n))
        probe = bench_old(n, 1)
        old = bench_old(n, max(1, min(200, int(args.old_budget / max(probe["amortized"], 1e-3)))))
        # The old driver's cost grows with the manifest: a whole job pays about n * cost(n) / 2.
        rows = (("old", old, n * old["amortized"] / 2), ("new", new, n * new["amortized"]))
        for how, r, total in rows:
            print(f"{n:>8} {how:>4} {r['median'] * 1e3:>14.2f} {r['p99'] * 1e3:>8.2f} {r['amortized'] * 1e3:>13.2f} "
                  f"{r['cpu'] * 1e3:>12.2f} {r.get('compaction_s', float('nan')):>10.2f} "
                  f"{r.get('load', float('nan')):>7.2f} {r['size'] / 1e6:>11.1f} {total / 60:>13.1f} min", flush=True)


if __name__ == "__main__":
    main()
