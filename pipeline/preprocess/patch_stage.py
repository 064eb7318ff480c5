"""Patch lengths from stored entropies: no model involved, vectorized over whole record batches.

A document split into consecutive rows (same ``doc_id``, ``part`` 0, 1, 2...) is patched as if whole. The
``ContinuousPatcher`` carries, from row to row (and batch to batch), the document's tail from a *resync point*
and patches the next part with that tail in front, then cuts the tail off again. A resync point is a true patch
start p from which patching the tail alone reproduces every known start a few bytes after p (checked, so rules
that treat a document's first bytes specially, a max-length split phase or a static phase are verified, not
assumed); rules that decide a start from a few neighbouring scores / bytes and the last start then agree with
whole-document patching after the border too. When no recent start verifies (e.g. no patch start at all in a
long run), the tail grows: at worst it is the whole document so far. ``topk`` ranks scores over the whole document, so split documents are patched
in two passes over the shard (``patch_entropy_shard``), holding one split document's scores at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from blt_model.patching import PatchingParams, patch_lengths_flat
from pipeline.dataset.documents import PartRef, StoredRow, join_parts
from pipeline.dataset.layout import patch_shard_path
from pipeline.dataset.shards import (
    ShardWriter,
    binary_values,
    flat_bytes,
    flat_values,
    iter_batches,
    patch_batch,
    patch_schema,
)
from pipeline.io.storage import join


def patches_for_batch(batch, params: PatchingParams) -> tuple[np.ndarray, np.ndarray]:
    """(flat patch lengths, patches per row) for one entropy record batch, every row patched on its own
    (parts of a split document too: use ``ContinuousPatcher`` for exact patch sets)."""
    values, offsets = flat_values(batch.column("entropies"))
    entropies = torch.from_numpy(values.astype(np.float32)) if params.needs_entropies else None
    byte_values = flat_bytes(batch.column("bytes")) if params.needs_bytes else None
    lengths, per_doc = patch_lengths_flat(params, torch.from_numpy(offsets.astype(np.int64)), entropies, byte_values)
    return lengths.numpy(), per_doc.numpy()


@dataclass
class _Tail:
    """A document's bytes (and scores) from its latest pair of consecutive patch starts to the end of a part."""

    doc_id: str
    part: int
    data: np.ndarray  # uint8
    entropies: np.ndarray | None  # float32, aligned with data


_MIN_TAIL = 16  # a resync point lies at least this far before the border
_SETTLE = 4  # positions after a call's first byte where its own first-byte rules (forced starts) may differ
_TRIES = 4  # recent starts tried as resync points before keeping the whole tail


def _starts_of(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _patch_one(params: PatchingParams, data: np.ndarray, entropies: np.ndarray | None) -> np.ndarray:
    """Patch lengths of one byte run patched as a document of its own."""
    offsets = torch.tensor([0, len(data)], dtype=torch.int64)
    ent = torch.from_numpy(entropies) if params.needs_entropies else None
    byte_values = torch.from_numpy(data.astype(np.int64)) if params.needs_bytes else None
    return patch_lengths_flat(params, offsets, ent, byte_values)[0].numpy()


def _tail(params: PatchingParams, doc_id: str, part: int, data: np.ndarray, entropies: np.ndarray | None,
          lengths: np.ndarray) -> _Tail:
    """The tail to carry after a run whose (true, whole-document) patches are ``lengths``.

    A start p is a resync point when patching data[p:] alone reproduces every true start from p + _SETTLE to
    the end: the forced starts of a call's first bytes are then settled, and what decides later starts (local
    scores / bytes, the last start, a max-length split phase, a static phase) agrees. With a max length or a
    static phase, at least two agreeing starts are required so the phase is pinned down.
    """
    starts = _starts_of(lengths)
    stateful = params.max_patch_length is not None or params.spec.periodic
    cut = 0
    candidates = starts[(starts > 0) & (len(data) - starts >= _MIN_TAIL)][::-1][:_TRIES]
    for point in candidates.tolist():
        sub = _starts_of(_patch_one(params, data[point:], None if entropies is None else entropies[point:])) + point
        settled = point + _SETTLE
        truth = starts[starts >= settled]
        if np.array_equal(sub[sub >= settled], truth) and (len(truth) >= 2 or not stateful):
            cut = point
            break
    return _Tail(doc_id, part, data[cut:].copy(), None if entropies is None else entropies[cut:].copy())


class ContinuousPatcher:
    """Patches the record batches of one entropy shard, in order; returns (lengths, per_row, continues)."""

    def __init__(self, params: PatchingParams, whole: dict[int, tuple[np.ndarray, bool]] | None = None) -> None:
        self.params = params
        self._last = None  # (doc_id, part, data, entropies, lengths) of the previous batch's last row, lazily
        self._whole = whole  # shard row -> (lengths, continues) of split documents patched whole (topk)
        self._row = 0  # shard row index of the next batch's first row

    def _previous(self) -> _Tail | None:
        if self._last is None or isinstance(self._last, _Tail):
            return self._last
        self._last = _tail(self.params, *self._last)
        return self._last

    def __call__(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values, offsets = flat_values(batch.column("entropies"))
        scores = values.astype(np.float32) if self.params.needs_entropies else None
        raw, _ = binary_values(batch.column("bytes"))
        lengths, per_row = patches_for_batch(batch, self.params)
        rows = batch.num_rows
        continues = np.zeros(rows, dtype=bool)
        first_row, self._row = self._row, self._row + rows
        if rows == 0:
            return lengths, per_row, continues
        if self._whole is not None:
            return self._from_whole(first_row, lengths, per_row, continues)
        parts = batch.column("part").to_numpy(zero_copy_only=False)
        first_patch = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)

        def row_data(i: int):
            lo, hi = offsets[i], offsets[i + 1]
            return raw[lo:hi], None if scores is None else scores[lo:hi], lengths[first_patch[i] : first_patch[i + 1]]

        candidates = np.nonzero(parts > 0)[0]
        ids = batch.column("doc_id")
        doc_ids = ids.to_pylist() if len(candidates) else {rows - 1: ids[rows - 1].as_py()}
        replaced: dict[int, np.ndarray] = {}
        tails: dict[int, _Tail] = {}
        for i in candidates.tolist():
            if i == 0:
                prev = self._previous()
            elif i - 1 in tails:
                prev = tails[i - 1]
            else:
                data, ent, row_lengths = row_data(i - 1)
                prev = _tail(self.params, doc_ids[i - 1], int(parts[i - 1]), data, ent, row_lengths)
            if prev is None or not PartRef(prev.doc_id, prev.part).is_followed_by(doc_ids[i], int(parts[i])):
                continue  # not a continuation we can see (e.g. a shard written before parts shared an id)
            data, ent, _ = row_data(i)
            ext_data = np.concatenate([prev.data, data])
            ext_ent = None if ent is None else np.concatenate([prev.entropies, ent])
            ext = _patch_one(self.params, ext_data, ext_ent)
            ends = np.cumsum(ext)
            k = int(np.searchsorted(ends, len(prev.data), side="right"))  # first patch ending past the tail
            mine = ext[k:].copy()
            mine[0] = ends[k] - len(prev.data)
            continues[i] = ends[k] - ext[k] < len(prev.data)
            replaced[i] = mine
            tails[i] = _tail(self.params, doc_ids[i], int(parts[i]), ext_data, ext_ent, ext)
        last = rows - 1
        self._last = tails[last] if last in tails else (doc_ids[last], int(parts[last]), *row_data(last))
        if replaced:
            pieces = [replaced[i] if i in replaced else lengths[first_patch[i] : first_patch[i + 1]]
                      for i in range(rows)]
            lengths = np.concatenate(pieces)
            per_row = np.array([len(p) for p in pieces], dtype=np.int64)
        return lengths, per_row, continues

    def _from_whole(self, first_row: int, lengths, per_row, continues):
        first_patch = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
        pieces, changed = [], False
        for i in range(len(per_row)):
            found = self._whole.pop(first_row + i, None)
            if found is None:
                pieces.append(lengths[first_patch[i] : first_patch[i + 1]])
            else:
                pieces.append(found[0])
                continues[i] = found[1]
                changed = True
        if changed:
            lengths = np.concatenate(pieces)
            per_row = np.array([len(p) for p in pieces], dtype=np.int64)
        return lengths, per_row, continues


def cut_patches(lengths: np.ndarray, sizes: list[int]) -> list[tuple[np.ndarray, bool]]:
    """Whole-document patch lengths cut at part borders: per part, (its patch lengths, continues)."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out, lo = [], 0
    for size in sizes:
        hi = lo + size
        a = int(np.searchsorted(ends, lo, side="right"))
        b = int(np.searchsorted(starts, hi, side="left"))
        out.append((np.minimum(ends[a:b], hi) - np.maximum(starts[a:b], lo), bool(starts[a] < lo)))
        lo = hi
    return out


def _split_documents_patched_whole(url: str, params: PatchingParams) -> dict[int, tuple[np.ndarray, bool]]:
    """First pass for modes that rank whole documents: each split document's rows, patched as one document."""
    found: dict[int, tuple[np.ndarray, bool]] = {}
    for doc in join_parts(_scored_rows(url)):
        if len(doc.parts) > 1:
            data = np.concatenate([p.data for p in doc.parts])
            ent = np.concatenate([p.entropies for p in doc.parts]) if params.needs_entropies else None
            pieces = cut_patches(_patch_one(params, data, ent), [len(p.data) for p in doc.parts])
            found.update({doc.key + k: piece for k, piece in enumerate(pieces)})
    return found


@dataclass
class _Scored:
    data: np.ndarray
    entropies: np.ndarray


def _scored_rows(url: str) -> Iterator[StoredRow[_Scored]]:
    """Every row of an entropy shard with its bytes and scores, keyed by its shard row index."""
    row = 0
    for batch in iter_batches(url, "entropies"):
        values, offsets = flat_values(batch.column("entropies"))
        raw, _ = binary_values(batch.column("bytes"))
        parts = batch.column("part").to_numpy(zero_copy_only=False)
        for i, doc_id in enumerate(batch.column("doc_id").to_pylist()):
            lo, hi = offsets[i], offsets[i + 1]
            yield StoredRow(doc_id, int(parts[i]), row + i, _Scored(raw[lo:hi], values[lo:hi].astype(np.float32)))
        row += batch.num_rows


def patch_entropy_shard(url: str, params: PatchingParams) -> Iterator[tuple[pa.RecordBatch, np.ndarray, np.ndarray,
                                                                             np.ndarray]]:
    """(entropy batch, patch lengths, patches per row, continues) for each record batch of an entropy shard."""
    whole = _split_documents_patched_whole(url, params) if params.spec.whole_documents else None
    patcher = ContinuousPatcher(params, whole)
    for batch in iter_batches(url, "entropies"):
        yield (batch, *patcher(batch))


def repatch_shard(task: dict, root: str, params_dict: dict) -> dict:
    """Write one shard's patch set from its stored entropies. ``task``: {input_url, entropy_output}."""
    params = PatchingParams.from_dict(params_dict)
    started = time.perf_counter()
    relative = patch_shard_path(params.key(), task["input_url"])
    writer = ShardWriter(join(root, relative), patch_schema(params.to_dict()))
    docs = nbytes = patches = 0
    try:
        for batch, lengths, per_row, continues in patch_entropy_shard(join(root, task["entropy_output"]), params):
            writer.write(patch_batch(batch.column("doc_id"), lengths, per_row, params.to_dict(), continues))
            docs += documents_in(batch)
            nbytes += int(lengths.sum())
            patches += len(lengths) - int(continues.sum())
    except BaseException as exc:
        writer.abort(exc)
        raise
    writer.close()
    return {"input_url": task["input_url"], "output": relative, "docs": docs, "bytes": nbytes,
            "patches": patches, "seconds": time.perf_counter() - started}


def documents_in(batch: pa.RecordBatch) -> int:
    """Documents that start in this batch (parts after the first belong to a document counted already)."""
    return int((batch.column("part").to_numpy(zero_copy_only=False) == 0).sum())
