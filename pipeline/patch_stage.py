"""Patch lengths from stored entropies: no model involved, vectorized over whole record batches.

A document split into consecutive rows (same ``doc_id``, ``part`` 0, 1, 2...) is patched as if whole: the
``ContinuousPatcher`` carries, from row to row (and batch to batch), the tail of the document since its latest
pair of consecutive patch starts, and patches the next part with that tail in front. Every rule in
``blt_model.patching`` decides a start from a few neighbouring scores / bytes and the last start, and a patcher
call forces starts at its first two positions, so starting the call at two true consecutive starts reproduces
whole-document patching exactly. (When a document has no such pair after its beginning, as in ``static`` mode,
the tail is the whole document so far.)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from blt_model.patching import PatchingParams, patch_lengths_flat

from .shards import ShardWriter, binary_values, flat_bytes, flat_values, iter_batches, patch_batch, patch_schema
from .storage import join


def shard_file_name(input_url: str) -> str:
    """Deterministic output name for an input object (or work unit key), so a re-run overwrites, not duplicates."""
    return f"part-{hashlib.sha1(input_url.encode()).hexdigest()[:16]}.arrow"


def patch_set_dir(params: PatchingParams) -> str:
    return f"patches/{params.key()}"


def patches_for_batch(batch, params: PatchingParams) -> tuple[np.ndarray, np.ndarray]:
    """(flat patch lengths, patches per row) for one entropy record batch, every row patched on its own
    (parts of a split document too: use ``ContinuousPatcher`` for exact patch sets)."""
    values, offsets = flat_values(batch.column("entropies"))
    entropies = torch.from_numpy(values.astype(np.float32)) if params.needs_entropies else None
    byte_values = flat_bytes(batch.column("bytes")) if params.mode == "space" else None
    lengths, per_doc = patch_lengths_flat(params, torch.from_numpy(offsets.astype(np.int64)), entropies, byte_values)
    return lengths.numpy(), per_doc.numpy()


@dataclass
class _Tail:
    """A document's bytes (and scores) from its latest pair of consecutive patch starts to the end of a part."""

    doc_id: str
    part: int
    data: np.ndarray  # uint8
    entropies: np.ndarray | None  # float32, aligned with data


def _tail(doc_id: str, part: int, data: np.ndarray, entropies: np.ndarray | None, lengths: np.ndarray) -> _Tail:
    starts = np.zeros(len(data), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)] = True
    pairs = np.nonzero(starts[:-1] & starts[1:])[0]
    cut = int(pairs[-1]) if len(pairs) else 0
    return _Tail(doc_id, part, data[cut:].copy(), None if entropies is None else entropies[cut:].copy())


class ContinuousPatcher:
    """Patches the record batches of one entropy shard, in order; returns (lengths, per_row, continues)."""

    def __init__(self, params: PatchingParams) -> None:
        self.params = params
        self._last = None  # (doc_id, part, data, entropies, lengths) of the previous batch's last row, lazily

    def _previous(self) -> _Tail | None:
        if self._last is None or isinstance(self._last, _Tail):
            return self._last
        self._last = _tail(*self._last)
        return self._last

    def _patch(self, data: np.ndarray, entropies: np.ndarray | None) -> np.ndarray:
        offsets = torch.tensor([0, len(data)], dtype=torch.int64)
        ent = torch.from_numpy(entropies) if self.params.needs_entropies else None
        byte_values = torch.from_numpy(data.astype(np.int64)) if self.params.mode == "space" else None
        return patch_lengths_flat(self.params, offsets, ent, byte_values)[0].numpy()

    def __call__(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values, offsets = flat_values(batch.column("entropies"))
        scores = values.astype(np.float32) if self.params.needs_entropies else None
        raw, _ = binary_values(batch.column("bytes"))
        lengths, per_row = patches_for_batch(batch, self.params)
        rows = batch.num_rows
        continues = np.zeros(rows, dtype=bool)
        if rows == 0:
            return lengths, per_row, continues
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
                prev = _tail(doc_ids[i - 1], int(parts[i - 1]), data, ent, row_lengths)
            if prev is None or prev.doc_id != doc_ids[i] or prev.part != parts[i] - 1:
                continue  # not a continuation we can see (e.g. a shard written before parts shared an id)
            data, ent, _ = row_data(i)
            ext_data = np.concatenate([prev.data, data])
            ext_ent = None if ent is None else np.concatenate([prev.entropies, ent])
            ext = self._patch(ext_data, ext_ent)
            ends = np.cumsum(ext)
            k = int(np.searchsorted(ends, len(prev.data), side="right"))  # first patch ending past the tail
            mine = ext[k:].copy()
            mine[0] = ends[k] - len(prev.data)
            continues[i] = ends[k] - ext[k] < len(prev.data)
            replaced[i] = mine
            tails[i] = _tail(doc_ids[i], int(parts[i]), ext_data, ext_ent, ext)
        last = rows - 1
        self._last = tails[last] if last in tails else (doc_ids[last], int(parts[last]), *row_data(last))
        if replaced:
            pieces = [replaced[i] if i in replaced else lengths[first_patch[i] : first_patch[i + 1]]
                      for i in range(rows)]
            lengths = np.concatenate(pieces)
            per_row = np.array([len(p) for p in pieces], dtype=np.int64)
        return lengths, per_row, continues


def repatch_shard(task: dict, root: str, params_dict: dict) -> dict:
    """Write one shard's patch set from its stored entropies. ``task``: {input_url, entropy_output}."""
    params = PatchingParams.from_dict(params_dict)
    started = time.perf_counter()
    relative = join(patch_set_dir(params), shard_file_name(task["input_url"]))
    writer = ShardWriter(join(root, relative), patch_schema(params.to_dict()))
    patcher = ContinuousPatcher(params)
    docs = nbytes = patches = 0
    try:
        for batch in iter_batches(join(root, task["entropy_output"]), "entropies"):
            lengths, per_row, continues = patcher(batch)
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
