"""Arrow IPC files read by byte range: the footer once per file, then only the buffers of the columns wanted.

An IPC file ends with a footer (a flatbuffer) that lists every record batch as a block ``(offset, metadata
length, body length)``; a record batch's metadata message lists its buffers ``(offset, length)`` inside the body,
in schema order (validity, offsets, data, then the children's). So a reader that knows the footer fetches one
record batch in two round trips (its metadata, then the wanted columns' buffers, all with one ``cat_ranges``)
and never the columns it skips (the loader never reads the stored entropies). Decoding stays pyarrow's: it reads
from a sparse in-memory view of the file that holds exactly the fetched ranges (a read outside them is fetched
and counted in ``misses``, never wrong).

The footer of each file is fetched once per process (``IpcFile.get``, an LRU of parsed footers): stored shards
are written once under content-addressed names and never change.
"""

from __future__ import annotations

import io
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from pipeline.io.storage import filesystem

MAGIC = b"ARROW1"
TAIL_BYTES = 1 << 10  # first guess at footer + trailer size (a larger footer costs one more request)
FOOTER_CACHE = 4096  # parsed footers kept per process
METADATA_CACHE = 64  # parsed record-batch metadata kept per file
COALESCE_GAP = 64  # buffers closer than this (alignment padding) are fetched as one range
_BLOCK = struct.Struct("<qi4xq")  # Block {offset: long, metaDataLength: int, (pad), bodyLength: long}
_BUFFER = struct.Struct("<qq")  # Buffer {offset: long, length: long}
_RECORD_BATCH = 3  # MessageHeader union tag


@dataclass(frozen=True)
class BatchBlock:
    offset: int
    metadata_length: int
    body_length: int


# ---- flatbuffer reading (just the few fields needed: no generated code) ------------------------------------
def _field(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the table at ``table``, or None when absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot >= size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _structs(buf: bytes, table: int, index: int, layout: struct.Struct) -> list[tuple]:
    pos = _field(buf, table, index)
    if pos is None:
        return []
    start = _deref(buf, pos)
    count = struct.unpack_from("<I", buf, start)[0]
    return [layout.unpack_from(buf, start + 4 + i * layout.size) for i in range(count)]


def footer_blocks(footer: bytes) -> list[BatchBlock]:
    """The record-batch blocks listed in an IPC footer flatbuffer (``Footer.recordBatches``)."""
    root = _deref(footer, 0)
    return [BatchBlock(*b) for b in _structs(footer, root, 3, _BLOCK)]


def message_buffers(metadata: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` in the body of every buffer of a record-batch metadata message (with its prefix)."""
    if struct.unpack_from("<I", metadata, 0)[0] == 0xFFFFFFFF:  # continuation marker, then the length
        length, start = struct.unpack_from("<i", metadata, 4)[0], 8
    else:  # pre-1.0 files: the length alone
        length, start = struct.unpack_from("<i", metadata, 0)[0], 4
    message = metadata[start : start + length]
    root = _deref(message, 0)
    kind = _field(message, root, 1)
    header = _field(message, root, 2)
    if kind is None or message[kind] != _RECORD_BATCH or header is None:
        raise ValueError("not a record batch message")
    return [(off, n) for off, n in _structs(message, _deref(message, header), 2, _BUFFER)]


def buffer_counts(schema: pa.Schema) -> list[int]:
    """Buffers each top-level field occupies in a record-batch body (its children's included)."""
    return [len(pa.array([], type=f.type).buffers()) for f in schema]


def coalesce(ranges: list[tuple[int, int]], gap: int = COALESCE_GAP) -> list[tuple[int, int]]:
    """``[start, end)`` ranges sorted and merged where less than ``gap`` bytes apart."""
    out: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


# ---- a sparse view of a file for pyarrow --------------------------------------------------------------------
class _Sparse(io.RawIOBase):
    """A file of ``size`` bytes of which only some ranges are held; reads elsewhere go to ``fetch``."""

    def __init__(self, size: int, pieces: list[tuple[int, bytes]], fetch: Callable[[int, int], bytes]) -> None:
        super().__init__()
        self._size, self._pieces, self._fetch = size, sorted(pieces, key=lambda p: p[0]), fetch
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        start, self._pos = self._pos, end
        for offset, data in self._pieces:
            if offset <= start and end <= offset + len(data):
                return data[start - offset : end - offset]
        return self._fetch(start, end)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


# ---- one file ------------------------------------------------------------------------------------------------
class IpcFile:
    """An IPC file's parsed footer (fetched once) and ranged reads of its record batches."""

    _cache: OrderedDict[str, IpcFile] = OrderedDict()
    _cache_lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.path = filesystem(url)
        self.stats = FetchStats()
        self.size = int(self.fs.size(self.path))
        tail = self._fetch(max(0, self.size - TAIL_BYTES), self.size)
        if len(tail) < 10 or tail[-6:] != MAGIC:
            raise ValueError(f"{url}: not an Arrow IPC file")
        footer_length = struct.unpack_from("<i", tail, len(tail) - 10)[0]
        need = footer_length + 10
        if need > len(tail):
            tail = self._fetch(self.size - need, self.size - len(tail)) + tail
        self.tail = (self.size - len(tail), tail)
        self.blocks = footer_blocks(tail[len(tail) - need : len(tail) - 10])
        self.schema = pa.ipc.open_file(_Sparse(self.size, [self.tail], self._miss)).schema
        self._counts = buffer_counts(self.schema)
        self._firsts = [sum(self._counts[:i]) for i in range(len(self._counts))]
        self._metadata: OrderedDict[int, tuple[bytes, list[tuple[int, int]]]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def get(cls, url: str) -> IpcFile:
        """The file's footer, fetched on first use and cached for the process."""
        with cls._cache_lock:
            found = cls._cache.get(url)
            if found is not None:
                cls._cache.move_to_end(url)
                return found
        opened = cls(url)  # outside the lock: other files open meanwhile
        with cls._cache_lock:
            found = cls._cache.setdefault(url, opened)
            while len(cls._cache) > FOOTER_CACHE:
                cls._cache.popitem(last=False)
            return found

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every footer (a benchmark simulating fresh processes)."""
        with cls._cache_lock:
            cls._cache.clear()

    @property
    def num_batches(self) -> int:
        return len(self.blocks)

    def field_indices(self, fields: Sequence[str] | None) -> list[int]:
        names = self.schema.names
        return list(range(len(names))) if fields is None else [names.index(f) for f in fields if f in names]

    def _fetch(self, start: int, end: int) -> bytes:
        data = self.fs.cat_file(self.path, start=start, end=end)
        self.stats.add(len(data), 1)
        return data

    def _miss(self, start: int, end: int) -> bytes:
        self.stats.misses += 1
        return self._fetch(start, end)

    def metadata_range(self, index: int) -> tuple[int, int] | None:
        """The byte range of a batch's metadata message, or None when it is cached."""
        with self._lock:
            if index in self._metadata:
                self._metadata.move_to_end(index)
                return None
        block = self.blocks[index]
        return block.offset, block.offset + block.metadata_length

    def set_metadata(self, index: int, data: bytes) -> None:
        with self._lock:
            self._metadata[index] = (data, message_buffers(data))
            while len(self._metadata) > METADATA_CACHE:
                self._metadata.popitem(last=False)

    def metadata(self, index: int) -> tuple[bytes, list[tuple[int, int]]]:
        with self._lock:
            found = self._metadata.get(index)
        if found is None:
            start, end = self.blocks[index].offset, self.blocks[index].offset + self.blocks[index].metadata_length
            self.set_metadata(index, self._fetch(start, end))
            with self._lock:
                found = self._metadata[index]
        return found

    def body_ranges(self, index: int, columns: list[int]) -> list[tuple[int, int]]:
        """File byte ranges of the buffers of ``columns`` (field indices) of batch ``index`` (coalesced)."""
        _, buffers = self.metadata(index)
        block = self.blocks[index]
        body = block.offset + block.metadata_length
        ranges = []
        for column in columns:
            for offset, length in buffers[self._firsts[column] : self._firsts[column] + self._counts[column]]:
                ranges.append((body + offset, body + offset + length))
        return coalesce(ranges)

    def decode(self, index: int, columns: list[int], pieces: list[tuple[int, bytes]]) -> pa.RecordBatch:
        """Record batch ``index`` (``columns`` only) from fetched pieces; pyarrow reads nothing else."""
        block = self.blocks[index]
        metadata, _ = self.metadata(index)
        held = [self.tail, (block.offset, metadata), *pieces]
        options = pa.ipc.IpcReadOptions(included_fields=columns)
        return pa.ipc.open_file(_Sparse(self.size, held, self._miss), options=options).get_batch(index)


@dataclass
class FetchStats:
    """What a file's reads cost: bytes and requests (misses: reads outside the planned ranges)."""

    bytes: int = 0
    requests: int = 0
    misses: int = 0

    def add(self, nbytes: int, requests: int) -> None:
        self.bytes += nbytes
        self.requests += requests


@dataclass(frozen=True)
class BatchRequest:
    file: IpcFile
    index: int
    fields: tuple[str, ...] | None  # None: every column


def read_batches(requests: list[BatchRequest]) -> list[pa.RecordBatch]:
    """Several record batches (of one filesystem) in two round trips: the metadata messages not yet cached,
    then every wanted buffer, each with one ``cat_ranges``."""
    if not requests:
        return []
    fs = requests[0].file.fs
    if any(r.file.fs is not fs for r in requests):  # several filesystems: one pair of round trips each
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(id(r.file.fs), []).append(i)
        out: list = [None] * len(requests)
        for members in groups.values():
            for i, batch in zip(members, read_batches([requests[i] for i in members])):
                out[i] = batch
        return out
    wanted = [(r, r.file.metadata_range(r.index)) for r in requests]
    missing = [(r, span) for r, span in wanted if span is not None]
    if missing:
        datas = _cat_ranges(fs, [(r.file, *span) for r, span in missing])
        for (r, _), data in zip(missing, datas):
            r.file.set_metadata(r.index, data)
    plans = []
    for r in requests:
        columns = r.file.field_indices(r.fields)
        plans.append((columns, r.file.body_ranges(r.index, columns)))
    flat = [(r.file, s, e) for r, (_, ranges) in zip(requests, plans) for s, e in ranges]
    datas = iter(_cat_ranges(fs, flat))
    out = []
    for r, (columns, ranges) in zip(requests, plans):
        pieces = [(s, next(datas)) for s, _ in ranges]
        out.append(r.file.decode(r.index, columns, pieces))
    return out


def _cat_ranges(fs, ranges: list[tuple[IpcFile, int, int]]) -> list[bytes]:
    if not ranges:
        return []
    datas = fs.cat_ranges([f.path for f, _, _ in ranges], [s for _, s, _ in ranges], [e for _, _, e in ranges])
    for (f, s, e), data in zip(ranges, datas):
        if isinstance(data, BaseException):
            raise data
        if len(data) != e - s:
            raise OSError(f"{f.url}: short read of [{s}, {e}): {len(data)} bytes")
        f.stats.add(len(data), 1)
    return datas
