"""Entropy preprocessing: raw shards -> Arrow shards with bytes, float16 entropies and a patch set.

This module is the driver: it lists inputs, fans work units out to ``entropy_stage.ShardProcessor`` actors
(one per worker, model loaded once) and commits each finished shard to the manifest, so a re-run skips
what is done and redoes only what is missing; a different entropy model invalidates everything.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

from . import ray_runtime
from .entropy_stage import PreprocessConfig, ShardProcessor, StrictModeError
from .manifest import Manifest, PatchSetRecord, ShardRecord
from .model_store import entropy_model_id
from .patch_stage import repatch_shard
from .storage import StorageError, list_inputs


def _progress(prefix: str, done: int, total: int, nbytes: int, started: float) -> None:
    rate = nbytes / max(time.perf_counter() - started, 1e-9) / 1e6
    print(f"[{prefix}] {done}/{total} shards done, {nbytes / 1e6:.2f} MB, {rate:.2f} MB/s", file=sys.stderr, flush=True)


def run_preprocess(cfg: PreprocessConfig) -> Manifest:
    """Process every pending input shard; returns the committed manifest."""
    inputs = list_inputs(cfg.inputs)
    model_id = entropy_model_id(cfg.entropy_model)
    manifest = Manifest.load(cfg.output)
    if manifest.entropy_model and manifest.entropy_model.get("id") != model_id:
        print(f"[preprocess] entropy model changed ({manifest.entropy_model.get('id')} -> {model_id}): "
              "recomputing every shard", file=sys.stderr)
        manifest.shards.clear()
        manifest.patch_sets.clear()
    manifest.entropy_model = {"id": model_id, "url": cfg.entropy_model}
    manifest.reader = asdict(cfg.reader)
    key = cfg.patching.key()
    patch_set = manifest.patch_sets.setdefault(key, PatchSetRecord(params=cfg.patching.to_dict()))
    manifest.default_patch_set = key

    def done(obj) -> bool:
        record = manifest.shards.get(obj.url)
        return record is not None and record.etag == obj.etag and record.size == obj.size

    pending = [{"url": o.url, "size": o.size, "etag": o.etag} for o in inputs if not done(o)]
    print(f"[preprocess] {len(inputs)} input shards, {len(inputs) - len(pending)} already done, "
          f"{len(pending)} to process -> {cfg.output}", file=sys.stderr, flush=True)
    started, processed_bytes = time.perf_counter(), 0
    for count, result in enumerate(_run_shards(pending, cfg), start=1):
        record = ShardRecord(**result["shard"])
        manifest.shards[record.input_url] = record
        patch_set.shards[record.input_url] = result["patches"]
        manifest.save()
        processed_bytes += record.bytes
        _progress("preprocess", count, len(pending), processed_bytes, started)
    # Shards done earlier but lacking this patch set (new params, same model): patch from stored entropies.
    missing = [{"input_url": u, "entropy_output": r.output} for u, r in manifest.shards.items()
               if u not in patch_set.shards]
    for result in ray_runtime.map_unordered(repatch_shard, missing, use_ray=cfg.use_ray, num_cpus=0.5,
                                            root=cfg.output, params_dict=cfg.patching.to_dict()):
        patch_set.shards[result["input_url"]] = result
        manifest.save()
    manifest.save()
    skipped = manifest.totals()["skipped"]
    if cfg.strict and skipped:
        raise StrictModeError(f"--strict: skipped input {skipped}")
    return manifest


def _run_shards(pending: list[dict], cfg: PreprocessConfig):
    if not pending:
        return
    if not cfg.use_ray:
        processor = ShardProcessor(cfg.entropy_model)
        for item in pending:
            yield processor.process(item, cfg)
        return
    import ray
    from ray.util import ActorPool

    actor_cls = ray.remote(ShardProcessor).options(
        num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker, max_restarts=3, max_task_retries=3
    )
    threads = max(1, int(cfg.cpus_per_worker))
    actors = [actor_cls.remote(cfg.entropy_model, threads) for _ in range(min(cfg.num_workers, len(pending)))]
    pool = ActorPool(actors)
    yield from pool.map_unordered(lambda actor, item: actor.process.remote(item, cfg), pending)
    for actor in actors:
        ray.kill(actor)


__all__ = ["PreprocessConfig", "ShardProcessor", "StorageError", "StrictModeError", "run_preprocess"]
