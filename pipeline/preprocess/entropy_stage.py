"""The entropy stage run by each Ray worker: one work unit of raw input -> entropy + patch shards.

``ShardProcessor`` loads the entropy model once per worker and turns a work unit (``pipeline.ingest.work_units``: a
whole input object, a range of parquet row groups, or a line-aligned byte range) into an Arrow entropy shard and
a patch shard, scoring documents packed end to end in long spans. A document longer than ``max_doc_bytes`` is
scored part by part with the last ``receptive_field`` bytes of the document in front of each later part (same
segment, outputs discarded), so its entropies equal scoring it whole, across flush batches too. A reader thread
reads, decompresses and parses the next batches (``PreprocessConfig.read_ahead``) while the current one is scored,
so a unit costs about max(read, score) rather than their sum. It returns the unit's commit record; committing it is
the driver's job (``pipeline.preprocess.driver``).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import asdict, fields

import numpy as np
import torch

from blt_model.entropy_stream import stream_entropies
from blt_model.tokens import bytes_to_tokens
from pipeline.dataset.documents import PartRef
from pipeline.dataset.layout import entropy_shard_path, patch_shard_path
from pipeline.dataset.manifest import ShardRecord
from pipeline.dataset.model_store import load_entropy_model
from pipeline.dataset.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_batch, patch_schema
from pipeline.ingest.readers import Document, SkipLog, read_documents
from pipeline.ingest.work_units import WorkUnit
from pipeline.io.background import BackgroundIterator
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.patch_stage import (
    ContinuousPatcher,
    documents_in,
    patch_entropy_shard,
)

ACCESS_DENIED = "access_denied"  # skip reason: the object exists but these credentials may not read it


class StrictModeError(RuntimeError):
    """--strict and some input had to be skipped."""


class ShardProcessor:
    """Holds the entropy model (loaded once) and turns input shards into entropy + patch shards."""

    def __init__(self, model_url: str, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model, self.model_id = load_entropy_model(model_url, self.device)
        self.dtype = torch.bfloat16 if device == "cuda" else None

    def ping(self) -> bool:
        """Answered only after every unit submitted before it (actor calls run in order): the driver's probe for
        units a restarted actor lost."""
        return True

    def process(self, item: dict, cfg: PreprocessConfig) -> dict:
        """Process one work unit (``WorkUnit.to_dict()``); records name it by ``unit.key``.

        An object we may not read (403 / PermissionError) is a counted skip with its URL, and its unit is
        committed empty: one such object must not stop a job, and the driver retries it on the next run."""
        unit = _unit(item)
        try:
            return self._process(unit, cfg, SkipLog(), read=True)
        except PermissionError as exc:
            log = SkipLog()
            log.record(ACCESS_DENIED, unit.input_url, f"{type(exc).__name__}: {exc}")
            return self._process(unit, cfg, log, read=False)

    def _process(self, unit: WorkUnit, cfg: PreprocessConfig, log: SkipLog, read: bool) -> dict:
        started = time.perf_counter()
        ent_rel = entropy_shard_path(unit.key)
        patch_rel = patch_shard_path(cfg.patching.key(), unit.key)
        ent_writer = ShardWriter(join(cfg.output, ent_rel), ENTROPY_SCHEMA)
        patch_writer = ShardWriter(join(cfg.output, patch_rel), patch_schema(cfg.patching.to_dict()))
        state = _UnitState(ContinuousPatcher(cfg.patching))
        # A mode ranking whole documents patches them after the entropy shard is complete.
        inline = not cfg.patching.spec.whole_documents
        try:
            docs = read_documents(unit.input_url, cfg.reader, log, unit.kind, unit.start, unit.stop) if read else ()
            # Reading, decompressing and parsing run in a reader thread while this one scores (the reader alone
            # touches ``log`` until the batches are done).
            with read_ahead(document_batches(docs, cfg.batch_bytes), cfg.read_ahead) as batches:
                for batch in batches:
                    self._flush(batch, cfg, ent_writer, patch_writer if inline else None, state)
            ent_writer.close()
            if not inline:
                for batch, lengths, per_row, continues in patch_entropy_shard(join(cfg.output, ent_rel), cfg.patching):
                    patch_writer.write(patch_batch(batch.column("doc_id"), lengths, per_row,
                                                   cfg.patching.to_dict(), continues))
                    state.patches += len(lengths) - int(continues.sum())
        except BaseException as exc:
            ent_writer.abort(exc)
            patch_writer.abort(exc)
            raise
        patch_writer.close()
        seconds = time.perf_counter() - started
        return {
            "shard": asdict(ShardRecord(unit.key, unit.size, unit.etag, ent_rel, state.docs, state.bytes,
                                        log.to_dict(), seconds, _worker_name())),
            "patches": {"input_url": unit.key, "output": patch_rel, "docs": state.docs, "bytes": state.bytes,
                        "patches": state.patches, "seconds": seconds},
        }

    def _flush(self, docs: list[Document], cfg: PreprocessConfig, ent_writer, patch_writer,
               state: _UnitState) -> None:
        data = [d.data for d in docs]
        contexts = state.contexts(docs, self.model.receptive_field)
        pieces = [piece for ctx, d in zip(contexts, data) for piece in (ctx, d)]
        lengths = torch.tensor([len(p) for p in pieces]).view(-1, 2).sum(1)
        stream = bytes_to_tokens(b"".join(pieces))
        doc_ids = torch.repeat_interleave(torch.arange(len(data)), lengths)
        ent = stream_entropies(self.model, stream, doc_ids, cfg.span, cfg.context, self.device, self.dtype)
        if any(contexts):  # drop the outputs at carried context positions
            keep = torch.ones(len(stream), dtype=torch.bool)
            at = 0
            for ctx, d in zip(contexts, data):
                keep[at : at + len(ctx)] = False
                at += len(ctx) + len(d)
            ent = ent[keep]
        batch = entropy_batch([d.doc_id for d in docs], [d.source for d in docs], [d.offset for d in docs],
                              [d.part for d in docs], data, ent.numpy().astype(np.float16))
        ent_writer.write(batch)
        state.docs += documents_in(batch)
        state.bytes += sum(len(d) for d in data)
        if patch_writer is not None:
            patch_lengths, per_row, continues = state.patcher(batch)
            patch_writer.write(patch_batch(batch.column("doc_id"), patch_lengths, per_row, cfg.patching.to_dict(),
                                           continues))
            state.patches += len(patch_lengths) - int(continues.sum())


def document_batches(docs: Iterable[Document], batch_bytes: int) -> Generator[list[Document], None, None]:
    """Documents gathered in order until a batch holds at least ``batch_bytes``; the last batch may hold less."""
    pending: list[Document] = []
    pending_bytes = 0
    for doc in docs:
        pending.append(doc)
        pending_bytes += len(doc.data)
        if pending_bytes >= batch_bytes:
            yield pending
            pending, pending_bytes = [], 0
    if pending:
        yield pending


def read_ahead(batches: Generator[list[Document], None, None],
               depth: int) -> AbstractContextManager[Iterator[list[Document]]]:
    """``depth`` batches produced ahead by a reader thread; 0 = produced in the caller's thread when asked for."""
    if depth > 0:
        return BackgroundIterator(batches, depth, name="preprocess-reader")
    return closing(batches)


class _UnitState:
    """What one work unit carries from flush to flush: the tail of a document being split, the patcher, totals."""

    def __init__(self, patcher: ContinuousPatcher) -> None:
        self.patcher = patcher
        self.tail: tuple[PartRef, bytes] | None = None  # (a document part, the doc's last receptive-field bytes)
        self.docs = self.bytes = self.patches = 0

    def contexts(self, docs: list[Document], field: int) -> list[bytes]:
        """For each document part, the earlier bytes of its document that its first predictions can see."""
        out = []
        for doc in docs:
            ctx = b""
            if self.tail is not None and self.tail[0].is_followed_by(doc.doc_id, doc.part):
                ctx = self.tail[1]
            out.append(ctx)
            recent = doc.data[-field:] if len(doc.data) >= field else (ctx + doc.data)[-field:]
            self.tail = (PartRef(doc.doc_id, doc.part), recent if field > 0 else b"")
        return out


def _unit(item: dict) -> WorkUnit:
    """A WorkUnit from its dict (extra keys ignored), or from the older {"url", "size", "etag"} whole-object item."""
    if "input_url" in item:
        return WorkUnit.from_dict({f.name: item[f.name] for f in fields(WorkUnit) if f.name in item})
    return WorkUnit(item["url"], item["size"], item["etag"])


def _worker_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return "local"
