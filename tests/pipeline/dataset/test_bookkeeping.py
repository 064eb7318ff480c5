"""Bookkeeping at scale: per-unit commit records + compaction, paged listing, bounded fan-out.

* commits are one small object each (manifest.json is not rewritten per commit) and loads merge them;
* compaction unions what is stored, under a lease; writers interleaving commits and compactions lose nothing;
* listing 2,000 objects costs a handful of requests (counted at a real HTTP proxy in front of moto), and the
  sizes/ETags equal what a HEAD per object would say;
* map_unordered pulls items lazily: never more than its in-flight bound ahead of the results.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dataset import manifest as manifest_module
from pipeline.dataset.manifest import Manifest, ShardRecord
from pipeline.io import ray_runtime
from pipeline.io.storage import list_inputs

MODEL = {"id": "m1", "url": "mem://m1"}


def _record(key: str, docs: int = 1) -> ShardRecord:
    return ShardRecord(key, 10, "e", f"entropies/{key}.arrow", docs, 10 * docs, {"counts": {}}, 0.1, "local")


def _patch(key: str) -> dict:
    return {"input_url": key, "output": f"patches/p/{key}.arrow", "docs": 1, "bytes": 10, "patches": 3}


def _new(root: str) -> Manifest:
    manifest = Manifest.load(root)
    manifest.commit_dataset(entropy_model=MODEL, default_patch_set="p")
    manifest.commit_patch_set("p", {"mode": "entropy"})
    return manifest


def test_commit_is_one_small_object_and_load_merges(tmp_path):
    root = str(tmp_path / "ds")
    manifest = _new(root)
    manifest.compact()
    before = (tmp_path / "ds" / "manifest.json").stat().st_mtime_ns
    for i in range(20):
        manifest.commit_unit(_record(f"u{i}"), "p", _patch(f"u{i}"))
    assert (tmp_path / "ds" / "manifest.json").stat().st_mtime_ns == before  # never rewritten per commit
    records = list((tmp_path / "ds" / "_commits" / "unit").iterdir())
    assert len(records) == 20 and all(r.stat().st_size < 2000 for r in records)
    loaded = Manifest.load(root)
    assert sorted(loaded.shards) == sorted(f"u{i}" for i in range(20))
    assert len(loaded.patch_sets["p"].shards) == 20 and loaded.default_patch_set == "p"
    assert loaded.entropy_model == MODEL
    # Compaction folds the records into manifest.json and deletes them; the view is unchanged.
    assert manifest.compact()
    assert not list((tmp_path / "ds" / "_commits" / "unit").iterdir())
    stored = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert stored["totals"]["shards"] == 20
    assert Manifest.load(root).to_dict() == loaded.to_dict()


def test_periodic_compaction_bounds_uncompacted_records(tmp_path):
    root = str(tmp_path / "ds")
    manifest = _new(root)
    for i in range(25):
        manifest.commit_unit(_record(f"u{i}"), "p", _patch(f"u{i}"))
        manifest.maybe_compact(every=10, seconds=1e9)
    left = list((tmp_path / "ds" / "_commits" / "unit").iterdir())
    # 2 setup records + 25 units: compacted after the 10th and 20th record, i.e. after units 8 and 18.
    assert len(left) == 7
    assert len(json.loads((tmp_path / "ds" / "manifest.json").read_text())["shards"]) == 18
    assert len(Manifest.load(root).shards) == 25


def test_model_change_clears_earlier_work_and_ignores_stale_records(tmp_path):
    root = str(tmp_path / "ds")
    old = _new(root)
    old.commit_unit(_record("a"), "p", _patch("a"))
    old.compact()
    new = Manifest.load(root)
    new.commit_dataset(entropy_model={"id": "m2", "url": "x"})
    assert not new.shards and not new.patch_sets
    old.commit_unit(_record("late"), "p", _patch("late"))  # a job still running with the old model
    new.commit_patch_set("q", {"mode": "entropy"})
    new.commit_unit(_record("b"), "q", _patch("b"))
    for view in (Manifest.load(root), new):
        view.refresh() if view is new else None
        assert sorted(view.shards) == ["b"] and sorted(view.patch_sets) == ["q"]
    new.compact()
    assert sorted(Manifest.load(root).shards) == ["b"]


def test_live_lease_skips_compaction_expired_lease_is_taken_over(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    manifest = _new(root)
    manifest.commit_unit(_record("a"), "p", _patch("a"))
    lease = tmp_path / "ds" / "_lease" / "compaction.json"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"owner": "other-job", "expires": time.time() + 60}))
    assert not manifest.compact()
    assert sorted(Manifest.load(root).shards) == ["a"]  # readers still see the uncompacted commit
    lease.write_text(json.dumps({"owner": "dead-job", "expires": time.time() - 1}))
    assert manifest.compact()
    assert not lease.exists()
    assert sorted(json.loads((tmp_path / "ds" / "manifest.json").read_text())["shards"]) == ["a"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["commit", "commit", "commit", "compact", "reload"])),
                min_size=1, max_size=40))
def test_interleaved_writers_never_lose_commits(tmp_path_factory, steps):
    """Three writers on one dataset, any interleaving of commits, compactions and reloads: the union survives."""
    root = str(tmp_path_factory.mktemp("ds"))
    writers = [_new(root) for _ in range(3)]
    expected = set()
    for n, (who, action) in enumerate(steps):
        writer = writers[who]
        if action == "commit":
            key = f"w{who}-{n}"
            writer.commit_unit(_record(key), "p", _patch(key))
            expected.add(key)
        elif action == "compact":
            writer.compact()
        else:
            writer.refresh()
            assert expected <= set(writer.shards)
    assert set(Manifest.load(root).shards) == expected
    writers[0].compact()
    assert set(json.loads(open(os.path.join(root, "manifest.json")).read())["shards"]) == expected
    assert set(Manifest.load(root).patch_sets["p"].shards) == expected


def test_concurrent_threads_commit_and_compact(tmp_path, monkeypatch):
    """Real concurrency (threads, one lease): 4 writers x 30 commits, compacting every 5: nothing lost."""
    monkeypatch.setattr(manifest_module, "LEASE_SECONDS", 30.0)
    root = str(tmp_path / "ds")
    _new(root).compact()

    def writer(w: int) -> None:
        manifest = Manifest.load(root)
        for i in range(30):
            manifest.commit_unit(_record(f"t{w}-{i}"), "p", _patch(f"t{w}-{i}"))
            manifest.maybe_compact(every=5, seconds=1e9)
        manifest.save()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))
    expected = {f"t{w}-{i}" for w in range(4) for i in range(30)}
    assert set(Manifest.load(root).shards) == expected
    assert set(json.loads((tmp_path / "ds" / "manifest.json").read_text())["shards"]) == expected


def test_map_unordered_pulls_items_lazily():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    results = ray_runtime.map_unordered(lambda x: x * 2, items(), use_ray=False)
    assert next(results) == 0 and len(pulled) == 1
    assert sum(results) == sum(2 * i for i in range(1, 1000))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_map_unordered_on_ray_keeps_at_most_max_in_flight(ray_cluster):
    pulled = []

    def items():
        for i in range(60):
            pulled.append(i)
            yield i

    seen = 0
    # json.dumps: a function Ray workers can import (this test module is not on their path).
    for _ in ray_runtime.map_unordered(json.dumps, items(), use_ray=True, num_cpus=0.5, max_in_flight=4):
        seen += 1
        # Before the k-th result is handed out, at most 4 + (k - 1) items were pulled: the window refills.
        assert len(pulled) <= 4 + seen - 1
    assert seen == 60 and len(pulled) == 60
    assert ray_runtime.default_in_flight(1.0) == int(ray_runtime.TASKS_PER_CPU * ray_runtime.cluster_cpus())


# ---------------------------------------------------------------------------------------------- S3 listing
@pytest.fixture
def counting_proxy(s3_endpoint, monkeypatch):
    """Every s3fs request of the test goes through a counting proxy on 127.0.0.1 (no faults)."""
    import s3fs
    from fault_proxy import FaultProxy

    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        yield proxy
    s3fs.S3FileSystem.clear_instance_cache()


N_OBJECTS = 2000


@pytest.mark.timeout(180)
def test_listing_2000_objects_takes_a_few_paged_requests(bucket, s3_endpoint, counting_proxy):
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = bucket.removeprefix("s3://")
    bodies = {f"raw/o{i:05d}.jsonl": b"x" * (i % 17 + 1) for i in range(N_OBJECTS)}
    # Straight into the (in-process) moto server's store: 2,000 PUTs over HTTP cost a minute on 2 cores.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key, body in bodies.items():
        backend.put_object(name, key, body)
    heads = {key: client.head_object(Bucket=name, Key=key) for key in list(bodies)[:: N_OBJECTS // 20]}

    for pattern in (f"{bucket}/raw/*.jsonl", f"{bucket}/raw"):  # moto takes ~7 s to list 2,000 keys
        counting_proxy.reset_counts()
        objects = list_inputs(pattern)
        assert len(objects) == N_OBJECTS
        # 2,000 objects = 2 pages of LIST; a directory costs one HEAD/probe more. Never a request per object.
        assert counting_proxy.total_requests <= 5, (pattern, counting_proxy.paths)
        assert counting_proxy.requests["GET"] >= 2  # the listing really was paged
        by_key = {o.url.split("/", 3)[3]: o for o in objects}
        for key, head in heads.items():
            assert by_key[key].size == head["ContentLength"] == len(bodies[key])
            assert by_key[key].etag == head["ETag"].strip('"')


@pytest.mark.timeout(180)
def test_manifest_load_lists_commits_in_pages(bucket, counting_proxy):
    root = f"{bucket}/ds"
    manifest = _new(root)
    for i in range(30):
        manifest.commit_unit(_record(f"u{i}"), "p", _patch(f"u{i}"))
    counting_proxy.reset_counts()
    loaded = Manifest.load(root)
    assert len(loaded.shards) == 30
    # One LIST of _commits/, one GET per uncompacted record (32), never a HEAD per record; s3fs probes a missing
    # manifest.json with a HEAD and a LIST (this dataset was never compacted).
    assert not [p for p in counting_proxy.paths if p.startswith("HEAD") and "_commits" in p]
    assert counting_proxy.total_requests <= 1 + 3 + 32, counting_proxy.paths
    assert manifest.compact()
    counting_proxy.reset_counts()
    assert len(Manifest.load(root).shards) == 30
    # Compacted: LIST (s3fs probes an empty prefix with a HEAD and a LIST more) + one GET of manifest.json.
    assert counting_proxy.total_requests <= 4, " | ".join(counting_proxy.paths)
    assert counting_proxy.paths[-1].startswith("GET") and counting_proxy.paths[-1].endswith("/ds/manifest.json")


def test_replanned_input_drops_its_old_units(tmp_path):
    """An input committed whole, then re-planned into byte ranges: the old unit goes, documents count once."""
    from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess

    (tmp_path / "raw").mkdir()
    write_object(str(tmp_path / "raw" / "big.jsonl"), jsonl_bytes(make_docs(9, 60)))
    save_tiny_entropy_model(str(tmp_path / "em"))
    cfg = PreprocessConfig(inputs=str(tmp_path / "raw" / "*.jsonl"), output=str(tmp_path / "ds"),
                           entropy_model=str(tmp_path / "em"), span=64, use_ray=False)
    whole = run_preprocess(cfg)
    assert list(whole.shards) == [str(tmp_path / "raw" / "big.jsonl")]
    split = run_preprocess(PreprocessConfig(**{**cfg.__dict__, "unit_bytes": 2000}))
    assert len(split.shards) > 1 and all("#b" in key for key in split.shards)
    assert split.totals()["docs"] == whole.totals()["docs"] == 60
    assert set(split.patch_sets[split.default_patch_set].shards) == set(split.shards)
    assert Manifest.load(str(tmp_path / "ds")).totals() == split.totals()


def test_recommitted_unit_drops_its_stale_entries_in_other_patch_sets(tmp_path):
    """A unit committed again (its input changed) has new entropies: entries made from the old ones must go."""
    root = str(tmp_path / "ds")
    manifest = _new(root)
    manifest.commit_patch_set("q", {"mode": "space"})
    manifest.commit_unit(_record("u0"), "p", _patch("u0"))
    manifest.commit_patch("q", "u0", _patch("u0"))
    manifest.compact()
    manifest.commit_unit(_record("u0", docs=2), "p", _patch("u0"))  # re-processed: only "p" is fresh
    for view in (manifest, Manifest.load(root)):
        assert "u0" in view.patch_sets["p"].shards and "u0" not in view.patch_sets["q"].shards
    manifest.commit_patch("q", "u0", _patch("u0"))  # re-patched after the new entropies: kept
    assert manifest.compact() and "u0" in Manifest.load(root).patch_sets["q"].shards


def test_a_stale_view_never_writes_back_what_another_job_dropped_or_replaced(tmp_path):
    """Job A loaded the dataset earlier; job B then drops one unit and re-processes another (its entries in other
    patch sets go stale). A's compaction must keep B's changes: only entries A set by hand are carried over."""
    root = str(tmp_path / "ds")
    setup = _new(root)
    setup.commit_patch_set("q", {"mode": "space"})
    for unit in ("u0", "u1", "u2"):
        setup.commit_unit(_record(unit), "p", _patch(unit))
        setup.commit_patch("q", unit, _patch(unit))
    setup.compact()
    job_a = Manifest.load(root)
    job_b = Manifest.load(root)
    job_b.commit_drop(["u1"])
    job_b.commit_unit(_record("u2", docs=2), "p", _patch("u2"))  # new entropies: q's entry for u2 is stale
    job_a.shards["by-hand"] = _record("by-hand")  # state A set without committing still lands
    assert job_a.compact()
    final = Manifest.load(root)
    assert set(final.shards) == {"u0", "u2", "by-hand"} and final.shards["u2"].docs == 2
    assert set(final.patch_sets["q"].shards) == {"u0"}
    assert set(final.patch_sets["p"].shards) == {"u0", "u2"}


def test_changed_input_is_repatched_in_every_patch_set(tmp_path):
    """Preprocess, a second patch set, the input edited, preprocess again: the second set follows the edit."""
    from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

    from blt_model.patching import PatchingParams
    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess
    from pipeline.preprocess.repatch import RepatchConfig, run_repatch

    (tmp_path / "raw").mkdir()
    path = str(tmp_path / "raw" / "a.jsonl")
    write_object(path, jsonl_bytes(make_docs(3, 5)))
    save_tiny_entropy_model(str(tmp_path / "em"))
    cfg = PreprocessConfig(inputs=str(tmp_path / "raw" / "*.jsonl"), output=str(tmp_path / "ds"),
                           entropy_model=str(tmp_path / "em"), span=64, use_ray=False)
    run_preprocess(cfg)
    _, key = run_repatch(RepatchConfig(dataset=cfg.output, patching=PatchingParams(mode="space"), use_ray=False))
    write_object(path, jsonl_bytes(make_docs(4, 8)))
    after = run_preprocess(cfg)
    assert after.shards[path].docs == 8
    assert after.patch_sets[key].shards[path]["docs"] == 8
    assert after.patch_sets[key].shards[path]["bytes"] == after.shards[path].bytes


def test_replanned_input_with_a_hash_in_its_name_drops_its_old_unit(tmp_path):
    """Unit keys are parsed by their unit suffix only: an input named ``a#1.jsonl`` is not counted twice."""
    from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

    from pipeline.dataset.layout import input_url_of
    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess

    assert input_url_of("s3://b/a#1.jsonl") == "s3://b/a#1.jsonl"
    assert input_url_of("s3://b/a#1.jsonl#b0-2000") == input_url_of("s3://b/a#1.jsonl#rg2-3") == "s3://b/a#1.jsonl"
    (tmp_path / "raw").mkdir()
    write_object(str(tmp_path / "raw" / "a#1.jsonl"), jsonl_bytes(make_docs(9, 30)))
    save_tiny_entropy_model(str(tmp_path / "em"))
    cfg = PreprocessConfig(inputs=str(tmp_path / "raw" / "*.jsonl"), output=str(tmp_path / "ds"),
                           entropy_model=str(tmp_path / "em"), span=64, use_ray=False)
    assert run_preprocess(cfg).totals()["docs"] == 30
    split = run_preprocess(PreprocessConfig(**{**cfg.__dict__, "unit_bytes": 1000}))
    assert len(split.shards) > 1 and all("#b" in key for key in split.shards)
    assert split.totals()["docs"] == Manifest.load(cfg.output).totals()["docs"] == 30
