"""The entropy stage run by each Ray worker: one work unit of raw input -> entropy + patch shards.

``ShardProcessor`` loads the entropy model once per worker and turns a work unit (today: a whole input file)
into an Arrow entropy shard and a patch shard, scoring documents packed end to end in long spans. It returns
the unit's commit record; committing it is the driver's job (``pipeline.preprocess``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from blt_model.entropy_model import stream_entropies
from blt_model.patching import PatchingParams
from blt_model.tokens import bytes_to_tokens

from .manifest import ShardRecord
from .model_store import load_entropy_model
from .patch_stage import patch_set_dir, patches_for_batch, shard_file_name
from .readers import ReaderConfig, SkipLog, read_documents
from .shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_batch, patch_schema
from .storage import join


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


