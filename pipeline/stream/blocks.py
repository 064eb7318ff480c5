"""Blocks: the work units of the training stream, and reading whole documents out of them.

A block is a range of record batches ``[start, stop)`` of one entropy shard (and the aligned patch shard). It
*owns* the documents whose first row (``part == 0``) lies in its range: a reader skips leading rows that continue
a document of the previous block and reads past its end to finish its last document, so a long document stored
as several rows (issue 14.2: same ``doc_id``, ``part`` = 0, 1, 2...) is never split between blocks.

Rows are addressed by a key ``(batch, row)``; a range of keys ``[start, end)`` selects the documents whose first
row lies in it. That one notion describes a whole block, the unread rest of a block and a single document, which
is what the elastic resume in ``pipeline.stream.loader`` hands between ranks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.dataset.documents import PartRef, StoredRow, join_parts
from pipeline.dataset.shards import SCHEMA_VERSION, SchemaError, binary_values, continues_column, flat_values
from pipeline.stream.ranged import BatchRequest, IpcFile, read_batches

_ENTROPY_FIELDS = ("doc_id", "part", "bytes")  # the loader never reads the stored entropies
_PATCH_FIELDS = ("patch_lengths", "continues")  # ("continues" may be absent: shards written before it)


@dataclass(frozen=True)
class ShardFiles:
    input_url: str
    entropies: str
    patches: str
    nbytes: int  # document bytes (manifest), for balancing estimates


@dataclass(frozen=True)
class Block:
    shard: int  # index into the source's shard list
    start: int  # first record batch
    stop: int  # end record batch (exclusive)


@dataclass
class Doc:
    """One whole document (all its parts joined), as stored bytes and joined patch lengths."""

    doc_id: str
    key: tuple[int, int]  # (batch, row) of its first row in the shard
    data: np.ndarray  # uint8
    lengths: np.ndarray  # int32, sums to len(data)


def _shard(url: str, kind: str) -> IpcFile:
    """The shard's footer (fetched once per process), after checking its schema version and kind."""
    shard = IpcFile.get(url)
    meta = shard.schema.metadata or {}
    version, found = meta.get(b"blt_schema_version", b"?").decode(), meta.get(b"kind", b"?").decode()
    if version != SCHEMA_VERSION or found != kind:
        raise SchemaError(f"{url}: expected {kind} shard v{SCHEMA_VERSION}, found {found} v{version}")
    return shard


def count_batches(files: list[ShardFiles], threads: int = 16) -> list[int]:
    """Record batches per entropy shard (the footer only), read in parallel."""

    def one(f: ShardFiles) -> int:
        return _shard(f.entropies, "entropies").num_batches

    if len(files) <= 1:
        return [one(f) for f in files]
    with ThreadPoolExecutor(min(threads, len(files))) as pool:
        return list(pool.map(one, files))


def plan_blocks(batch_counts: list[int], block_batches: int) -> list[Block]:
    """Cut every shard into blocks of ``block_batches`` record batches (the last one of a shard may be shorter)."""
    step = max(1, block_batches)
    return [Block(i, b, min(b + step, n)) for i, n in enumerate(batch_counts) for b in range(0, n, step)]


def permutation(n: int, seed: int, *salt: object) -> np.ndarray:
    """A permutation of range(n) that depends only on the seed and the salt (source, epoch...)."""
    digest = hashlib.blake2b(repr((seed, *salt)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little")).permutation(n)


def hash_unit(seed: int, text: str) -> float:
    """A stable pseudo-random number in [0, 1) for a string (validation membership)."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class ShardReader:
    """Reads (entropy, patch) record-batch pairs by byte range (``pipeline.stream.ranged``), with a small LRU of
    decoded batches and a read-ahead pool."""

    def __init__(self, cached_batches: int = 8, read_ahead: int = 2) -> None:
        self._pool = ThreadPoolExecutor(read_ahead, thread_name_prefix="blt-read") if read_ahead else None
        self._ahead: dict = {}  # (entropy url, batch) -> future of the decoded pair, read on the pool
        self._batches: OrderedDict = OrderedDict()
        self._max_batches = cached_batches
        self._peeks: dict = {}

    def num_batches(self, files: ShardFiles) -> int:
        return _shard(files.entropies, "entropies").num_batches

    def first_part(self, files: ShardFiles, index: int) -> int:
        """``part`` of a batch's first row, reading that column alone (does a document continue into it?)."""
        key = (files.entropies, index)
        if key in self._batches:
            return int(self._batches[key][0].column("part")[0].as_py())
        future = self._ahead.get(key)
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            return int(future.result()[0].column("part")[0].as_py())
        if key not in self._peeks:
            [batch] = read_batches([BatchRequest(_shard(files.entropies, "entropies"), index, ("part",))])
            self._peeks[key] = int(batch.column("part")[0].as_py())
        return self._peeks[key]

    def read_ahead(self, files: ShardFiles, start: int, stop: int) -> None:
        """Start reading batches ``[start, stop)`` in the background (a block this rank reads next), so storage
        latency overlaps decoding; the order of documents does not depend on it."""
        if self._pool is None:
            return
        for index in range(start, stop):
            key = (files.entropies, index)
            if key not in self._ahead and key not in self._batches:
                try:
                    self._ahead[key] = self._pool.submit(_read_pair, files, index)
                except RuntimeError:  # interpreter shutting down: read synchronously if at all
                    return
        while len(self._ahead) > 4 * self._max_batches:  # never consumed (e.g. after a re-deal): forget
            self._ahead.pop(next(iter(self._ahead))).cancel()

    def batch(self, files: ShardFiles, index: int) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        key = (files.entropies, index)
        if key in self._batches:
            self._batches.move_to_end(key)
            return self._batches[key]
        future = self._ahead.pop(key, None)
        if future is not None and not future.cancelled():
            eb, pb = future.result()
        else:
            eb, pb = _read_pair(files, index)
        if eb.num_rows != pb.num_rows:
            raise ValueError(f"{files.patches}: batch {index} has {pb.num_rows} rows, entropies {eb.num_rows}")
        self._batches[key] = (eb, pb)
        self._peeks.pop(key, None)
        while len(self._batches) > self._max_batches:
            self._batches.popitem(last=False)
        return eb, pb

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()
        self._batches.clear()


def _read_pair(files: ShardFiles, index: int) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """One batch pair: both metadata messages, then both batches' wanted buffers, one round trip each."""
    ent, pat = _shard(files.entropies, "entropies"), _shard(files.patches, "patches")
    eb, pb = read_batches([BatchRequest(ent, index, _ENTROPY_FIELDS), BatchRequest(pat, index, _PATCH_FIELDS)])
    return eb, pb


class _Columns:
    """One record-batch pair as numpy views (decoded once per batch)."""

    def __init__(self, eb: pa.RecordBatch, pb: pa.RecordBatch) -> None:
        self.rows = eb.num_rows
        self.ids = eb.column("doc_id").to_pylist()
        self.parts = eb.column("part").to_numpy(zero_copy_only=False)
        self.raw, self.offsets = binary_values(eb.column("bytes"))
        self.lengths, self.length_offsets = flat_values(pb.column("patch_lengths"))
        self.continues = continues_column(pb)

    def data(self, i: int) -> np.ndarray:
        return self.raw[self.offsets[i] : self.offsets[i + 1]]

    def patch_lengths(self, i: int) -> np.ndarray:
        return self.lengths[self.length_offsets[i] : self.length_offsets[i + 1]]


def _join(doc_id: str, key, datas: list[np.ndarray], lengths: list[np.ndarray], continues: list[bool]) -> Doc:
    if len(datas) == 1:
        data, joined = datas[0], lengths[0]
    else:
        data = np.concatenate(datas)
        pieces = [lengths[0].copy()]
        for part_lengths, cont in zip(lengths[1:], continues[1:]):
            if cont and len(part_lengths) and len(pieces[-1]):
                # The row's first patch continues the previous row's last patch: they are one patch.
                last = pieces[-1]
                pieces[-1] = np.concatenate([last[:-1], [last[-1] + part_lengths[0]]]).astype(np.int32)
                if len(part_lengths) > 1:  # a part inside one patch adds no piece: the next part merges on
                    pieces.append(part_lengths[1:])
            else:
                pieces.append(part_lengths)
        joined = np.concatenate(pieces).astype(np.int32)
    if int(joined.sum()) != len(data):
        raise ValueError(f"patch lengths of {doc_id} sum to {int(joined.sum())}, not {len(data)}")
    return Doc(doc_id, key, data, joined)


@dataclass
class _Row:
    """What the stream reads from one stored row."""

    data: np.ndarray
    lengths: np.ndarray
    continues: bool


def iter_docs(reader: ShardReader, files: ShardFiles, start: tuple[int, int], end: tuple[int, int],
              ) -> Iterator[Doc]:
    """The whole documents whose first row's key lies in ``[start, end)``, in shard order."""

    def on_error(row: StoredRow, expected: PartRef) -> str:
        return (f"{files.entropies}: row {row.key} is part {row.part} of {row.doc_id!r}, "
                f"expected part {expected.part} of {expected.doc_id!r}")

    for doc in join_parts(_rows(reader, files, start, end), strict=True, on_error=on_error):
        rows = doc.parts
        yield _join(doc.doc_id, doc.key, [r.data for r in rows], [r.lengths for r in rows], [r.continues for r in rows])


def _rows(reader: ShardReader, files: ShardFiles, start: tuple[int, int], end: tuple[int, int],
          ) -> Iterator[StoredRow[_Row]]:
    """The rows from ``start`` up to the first document start at or after ``end`` (the last document owned may
    go on past ``end``); a batch past ``end`` that starts a new document is never read, only its first part."""
    total = reader.num_batches(files)
    b, r = start
    started = False  # has a document of this range started? (otherwise past end means nothing to finish)
    while b < total:
        cols = _Columns(*reader.batch(files, b))
        for i in range(r, cols.rows):
            part = int(cols.parts[i])
            if part == 0:
                if (b, i) >= tuple(end):
                    return
                started = True
            yield StoredRow(cols.ids[i], part, (b, i),
                            _Row(cols.data(i), cols.patch_lengths(i), bool(cols.continues[i]) if part else False))
        b, r = b + 1, 0
        if (b, 0) >= tuple(end) and (not started or b >= total or reader.first_part(files, b) == 0):
            return
