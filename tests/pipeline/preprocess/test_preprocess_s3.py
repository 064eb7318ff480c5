"""End to end against a real S3 server on loopback: preprocess on Ray, resume, add a shard, repatch, calibrate."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from blt_model.patching import PatchingParams, patch_lengths
from blt_model.tokens import bytes_to_tokens
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import iter_batches
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch

pytestmark = pytest.mark.timeout(240)


def _etags(url: str) -> dict[str, str]:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {p: fs.info(p)["ETag"] for p in fs.find(path)}


def _read_patch_set(root: str, manifest: Manifest, key: str) -> dict[str, list[int]]:
    out = {}
    for record in manifest.patch_sets[key].shards.values():
        for batch in iter_batches(join(root, record["output"]), "patches"):
            for doc_id, lengths in zip(batch.column("doc_id").to_pylist(), batch.column("patch_lengths").to_pylist()):
                out[doc_id] = lengths
    return out


def test_preprocess_resume_add_shard_repatch_calibrate(bucket, ray_cluster, monkeypatch):
    model = save_tiny_entropy_model(f"{bucket}/models/em")
    docs = {0: make_docs(0, 40), 1: make_docs(1, 25)}
    for shard, records in docs.items():
        write_object(f"{bucket}/raw/shard-{shard}.jsonl.zst", jsonl_bytes(records), "zstd")
    root = f"{bucket}/ds"
    params = PatchingParams(threshold=3.0)
    cfg = PreprocessConfig(inputs=f"{bucket}/raw/*.jsonl.zst", output=root, entropy_model=f"{bucket}/models/em",
                           patching=params, span=64, batch_bytes=2000, num_workers=2)
    manifest = run_preprocess(cfg)
    assert manifest.totals()["docs"] == 65 and manifest.totals()["skipped"] == {}
    assert len(manifest.shards) == 2

    # Stored entropies equal scoring each document alone (float16 storage), patches equal HF-convention patching.
    by_id = {r["id"]: r["text"].encode() for rs in docs.values() for r in rs}
    stored = {}
    for record in manifest.shards.values():
        for batch in iter_batches(join(root, record.output), "entropies"):
            for doc_id, data, ent in zip(batch.column("doc_id").to_pylist(), batch.column("bytes").to_pylist(),
                                         batch.column("entropies").to_pylist()):
                assert data == by_id[doc_id]
                stored[doc_id] = np.array(ent, dtype=np.float32)
    assert set(stored) == set(by_id)
    for doc_id in list(by_id)[:10]:
        expected = model.entropies(bytes_to_tokens(by_id[doc_id])[None])[0].numpy()
        np.testing.assert_allclose(stored[doc_id], expected, atol=5e-3)
    patches = _read_patch_set(root, manifest, params.key())
    for doc_id, ent in stored.items():
        assert patches[doc_id] == patch_lengths(params, torch.from_numpy(ent)[None])[0].tolist()

    # A re-run is a no-op: nothing is rewritten.
    before = _etags(root)
    before_manifest = {k: v for k, v in before.items() if not k.endswith("manifest.json")}
    run_preprocess(cfg)
    after = _etags(root)
    assert {k: v for k, v in after.items() if not k.endswith("manifest.json")} == before_manifest

    # A new shard goes through the model alone; existing outputs stay untouched.
    write_object(f"{bucket}/raw/shard-2.jsonl.zst", jsonl_bytes(make_docs(2, 10)), "zstd")
    manifest = run_preprocess(cfg)
    assert len(manifest.shards) == 3 and manifest.totals()["docs"] == 75
    after_add = _etags(root)
    for key, etag in before_manifest.items():
        assert after_add[key] == etag

    # Re-patching with a new threshold never loads the model, and equals a from-scratch run with that threshold.
    def no_model(*args, **kwargs):
        raise AssertionError("repatch must not load the entropy model")

    monkeypatch.setattr("pipeline.preprocess.entropy_stage.load_entropy_model", no_model)
    monkeypatch.setattr("pipeline.dataset.model_store.load_entropy_model", no_model)
    new_params = PatchingParams(threshold=2.0, max_patch_length=8)
    manifest, key = run_repatch(RepatchConfig(root, new_params, use_ray=False))
    repatched = _read_patch_set(root, manifest, key)
    assert params.key() in manifest.patch_sets  # the old set stays readable
    monkeypatch.undo()
    scratch_root = f"{bucket}/scratch"
    scratch = run_preprocess(PreprocessConfig(**{**cfg.__dict__, "output": scratch_root, "patching": new_params}))
    assert _read_patch_set(scratch_root, scratch, new_params.key()) == repatched

    # Calibration hits the target average patch size within 2%, measured on the written patch set.
    for target, mode in ((4.0, "entropy"), (3.0, "monotonic")):
        manifest, key = run_repatch(RepatchConfig(root, PatchingParams(mode=mode, threshold=1.0), target))
        lengths = [x for v in _read_patch_set(root, manifest, key).values() for x in v]
        achieved = sum(lengths) / len(lengths)
        assert abs(achieved - target) / target < 0.02, (mode, achieved)
        assert manifest.patch_sets[key].calibration["target_avg_patch_size"] == target


def test_changed_entropy_model_redoes_everything(bucket, ray_cluster):
    save_tiny_entropy_model(f"{bucket}/models/a", seed=0)
    save_tiny_entropy_model(f"{bucket}/models/b", seed=1)
    write_object(f"{bucket}/raw/one.jsonl", jsonl_bytes(make_docs(5, 8)))
    cfg = PreprocessConfig(inputs=f"{bucket}/raw/*.jsonl", output=f"{bucket}/ds", entropy_model=f"{bucket}/models/a",
                           span=64, use_ray=False)
    first = run_preprocess(cfg)
    second = run_preprocess(PreprocessConfig(**{**cfg.__dict__, "entropy_model": f"{bucket}/models/b"}))
    assert first.entropy_model["id"] != second.entropy_model["id"]
    assert second.shards[next(iter(second.shards))].seconds > 0
    assert Manifest.load(f"{bucket}/ds").entropy_model["id"] == second.entropy_model["id"]
