"""Arrow IPC shard formats (zstd-compressed), schema version 1.

entropies/part-<digest>.arrow, one row per document (or document part):
    doc_id: string, source: string, offset: int64, part: int32,
    bytes: large_binary, entropies: large_list<float16>   (entropies[t] scores byte t+1, natural log)
patches/<params-key>/part-<digest>.arrow, rows aligned with the entropy shard:
    doc_id: string, patch_lengths: large_list<int32>,      (sums to len(bytes); every length >= 1)
    continues: bool                                        (the row's first patch continues the previous row's
                                                            last patch; shards written before it: read as False)

A document longer than the reader's ``max_doc_bytes`` is stored as consecutive rows with the same ``doc_id`` and
``part`` 0, 1, 2...; its entropies and patches are those of the whole document scored / patched in one pass.
The schema metadata carries ``blt_schema_version`` and, for patches, the patching params as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from pipeline.io.storage import atomic_open, filesystem

SCHEMA_VERSION = "1"
ENTROPY_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("offset", pa.int64()),
        ("part", pa.int32()),
        ("bytes", pa.large_binary()),
        ("entropies", pa.large_list(pa.float16())),
    ],
    metadata={"blt_schema_version": SCHEMA_VERSION, "kind": "entropies"},
)
PATCH_FIELDS = [("doc_id", pa.string()), ("patch_lengths", pa.large_list(pa.int32())), ("continues", pa.bool_())]
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class SchemaError(ValueError):
    """A shard whose schema is not the one this version reads."""


def patch_schema(params: dict) -> pa.Schema:
    return pa.schema(
        PATCH_FIELDS,
        metadata={"blt_schema_version": SCHEMA_VERSION, "kind": "patches", "params": json.dumps(params)},
    )


def entropy_batch(
    doc_ids: list[str], sources: list[str], offsets: list[int], parts: list[int], data: list[bytes],
    entropies: np.ndarray,
) -> pa.RecordBatch:
    """``entropies`` is the flat float16 array for all documents in order."""
    lengths = np.fromiter((len(d) for d in data), dtype=np.int64, count=len(data))
    list_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ent = pa.LargeListArray.from_arrays(pa.array(list_offsets), pa.array(entropies.astype(np.float16)))
    return pa.record_batch(
        [pa.array(doc_ids, pa.string()), pa.array(sources, pa.string()), pa.array(offsets, pa.int64()),
         pa.array(parts, pa.int32()), pa.array(data, pa.large_binary()), ent],
        schema=ENTROPY_SCHEMA,
    )


def patch_batch(doc_ids: pa.Array, lengths: np.ndarray, per_doc: np.ndarray, params: dict,
                continues: np.ndarray | None = None) -> pa.RecordBatch:
    offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(lengths.astype(np.int32)))
    if continues is None:
        continues = np.zeros(len(per_doc), dtype=bool)
    return pa.record_batch([doc_ids, column, pa.array(np.asarray(continues, dtype=bool))],
                           schema=patch_schema(params))


def continues_column(batch: pa.RecordBatch) -> np.ndarray:
    """The ``continues`` flags of a patch batch; all False for shards written before the column existed."""
    if "continues" not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=bool)
    return batch.column("continues").to_numpy(zero_copy_only=False).astype(bool)


class ShardWriter:
    """Streams record batches into one Arrow IPC file, committed atomically on close."""

    def __init__(self, url: str, schema: pa.Schema) -> None:
        self._context = atomic_open(url)
        self._sink = self._context.__enter__()
        self._writer = pa.ipc.new_file(self._sink, schema, options=_WRITE_OPTIONS)
        self._done = False

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._done = True
        self._writer.close()
        self._context.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        """Discard the write (no-op once closed: a committed file stays, the manifest decides what counts)."""
        if self._done:
            return
        self._done = True
        try:
            self._writer.close()
        finally:
            self._context.__exit__(type(exc), exc, exc.__traceback__)


def iter_batches(url: str, kind: str) -> Iterator[pa.RecordBatch]:
    """Record batches of a shard, after checking its schema version and kind."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        reader = pa.ipc.open_file(handle)
        meta = reader.schema.metadata or {}
        version = meta.get(b"blt_schema_version", b"?").decode()
        found = meta.get(b"kind", b"?").decode()
        if version != SCHEMA_VERSION or found != kind:
            raise SchemaError(f"{url}: expected {kind} shard v{SCHEMA_VERSION}, found {found} v{version}")
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def flat_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of a large_list column, without copying when possible."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def binary_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(all documents' bytes end to end as uint8, offsets) of a large_binary column, without copying."""
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset : column.offset + len(column) + 1]
    raw = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return raw, offsets - offsets[0]


def flat_bytes(column: pa.Array) -> torch.Tensor:
    """All documents' bytes of a large_binary column, end to end, as an int64 tensor (for space patching)."""
    return torch.from_numpy(binary_values(column)[0].astype(np.int64))
