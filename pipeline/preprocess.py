"""Entropy preprocessing: raw shards -> Arrow shards with bytes, float16 entropies and a patch set.

One Ray actor per worker loads the entropy model once and processes whole input shards, batching their
documents into long packed spans. The driver commits each finished shard to the manifest, so a re-run skips
what is done and redoes only what is missing; a different entropy model invalidates everything.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from blt_model.entropy_model import stream_entropies
from blt_model.patching import PatchingParams
from blt_model.tokens import bytes_to_tokens

from . import ray_runtime
from .manifest import Manifest, PatchSetRecord, ShardRecord
from .model_store import entropy_model_id, load_entropy_model
from .patch_stage import patch_set_dir, patches_for_batch, repatch_shard, shard_file_name
from .readers import ReaderConfig, SkipLog, read_documents
from .shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_batch, patch_schema
from .storage import StorageError, join, list_inputs


class StrictModeError(RuntimeError):
    """--strict and some input had to be skipped."""


@dataclass
class PreprocessConfig:
    inputs: str
    output: str
    entropy_model: str
    patching: PatchingParams = field(default_factory=PatchingParams)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    span: int = 16384  # bytes scored per model call, documents packed end to end
    context: int | None = None  # left context re-read per span; None = the model's receptive field (exact)
    batch_bytes: int = 1 << 20  # documents gathered per scoring call / Arrow record batch
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    strict: bool = False
    use_ray: bool = True


class ShardProcessor:
    """Holds the entropy model (loaded once) and turns input shards into entropy + patch shards."""

    def __init__(self, model_url: str, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model, self.model_id = load_entropy_model(model_url, self.device)
        self.dtype = torch.bfloat16 if device == "cuda" else None

    def process(self, item: dict, cfg: PreprocessConfig) -> dict:
        started = time.perf_counter()
        url = item["url"]
        name = shard_file_name(url)
        ent_rel = join("entropies", name)
        patch_rel = join(patch_set_dir(cfg.patching), name)
        log = SkipLog()
        ent_writer = ShardWriter(join(cfg.output, ent_rel), ENTROPY_SCHEMA)
        patch_writer = ShardWriter(join(cfg.output, patch_rel), patch_schema(cfg.patching.to_dict()))
        totals = {"docs": 0, "bytes": 0, "patches": 0}
        try:
            pending: list = []
            pending_bytes = 0
            for doc in read_documents(url, cfg.reader, log):
                pending.append(doc)
                pending_bytes += len(doc.data)
                if pending_bytes >= cfg.batch_bytes:
                    self._flush(pending, cfg, ent_writer, patch_writer, totals)
                    pending, pending_bytes = [], 0
            if pending:
                self._flush(pending, cfg, ent_writer, patch_writer, totals)
        except BaseException as exc:
            ent_writer.abort(exc)
            patch_writer.abort(exc)
            raise
        ent_writer.close()
        patch_writer.close()
        seconds = time.perf_counter() - started
        return {
            "shard": asdict(ShardRecord(url, item["size"], item["etag"], ent_rel, totals["docs"], totals["bytes"],
                                        log.to_dict(), seconds, _worker_name())),
            "patches": {"input_url": url, "output": patch_rel, "docs": totals["docs"], "bytes": totals["bytes"],
                        "patches": totals["patches"], "seconds": seconds},
        }

    def _flush(self, docs, cfg: PreprocessConfig, ent_writer, patch_writer, totals) -> None:
        data = [d.data for d in docs]
        lengths = torch.tensor([len(d) for d in data])
        stream = bytes_to_tokens(b"".join(data))
        doc_ids = torch.repeat_interleave(torch.arange(len(data)), lengths)
        ent = stream_entropies(self.model, stream, doc_ids, cfg.span, cfg.context, self.device, self.dtype)
        batch = entropy_batch([d.doc_id for d in docs], [d.source for d in docs], [d.offset for d in docs],
                              [d.part for d in docs], data, ent.numpy().astype(np.float16))
        ent_writer.write(batch)
        patch_lengths, per_doc = patches_for_batch(batch, cfg.patching)
        patch_writer.write(patch_batch(batch.column("doc_id"), patch_lengths, per_doc, cfg.patching.to_dict()))
        totals["docs"] += len(docs)
        totals["bytes"] += int(lengths.sum())
        totals["patches"] += len(patch_lengths)


def _worker_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return "local"


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
