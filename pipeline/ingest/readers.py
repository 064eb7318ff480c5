"""Streaming document readers for raw shards: jsonl(.gz/.zst), txt, parquet, raw binary.

Every reader yields ``Document``s and records what it could not use in a ``SkipLog`` instead of raising, so no
byte sequence stops a job: each record's parse error is that record's skip, a damaged compressed stream is one
``corrupt_compression`` skip (documents before the damage are kept), an unreadable object is that object's skip.
Only storage errors propagate (a missing object raises FileNotFoundError; other I/O errors from the object store
are left to the caller's retry), never anything caused by the bytes themselves.

Byte accounting (``SkipLog``): ``input_bytes`` counts what the reader consumed, and every consumed byte is either
kept (it ended in a document, or is framing such as a blank line) or lost under a reason, so
``kept_bytes + sum(lost_bytes) == input_bytes`` always holds. Units: decoded bytes for jsonl/txt/binary (after
decompression; for an uncompressed object or byte range, its size), stored bytes for parquet (each row group's
compressed column chunks; footer and other framing count as kept in the unit that starts at row group 0).
Compressed bytes that cannot be decoded are reported separately as ``undecodable_bytes``: from the start of the
frame (zstd) or member (gzip) where decoding failed to the end of the object.

Memory stays bounded by one line (at most ``max_line_bytes``), one parquet batch or one ``max_doc_bytes`` piece.
"""

from __future__ import annotations

import json
import posixpath
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.io.storage import filesystem

MAX_EXAMPLES = 5
_CHUNK = 1 << 16  # compressed / raw bytes read per step


@dataclass
class ReaderConfig:
    text_field: str = "text"
    id_field: str = "id"
    txt_mode: str = "file"  # "file": one document per file; "line": one per line
    max_doc_bytes: int = 1 << 20  # longer documents become consecutive parts of one document (never truncated)
    format: str | None = None  # None: from the file name
    max_line_bytes: int = 64 << 20  # longer jsonl / txt lines are skipped as line_too_long, never held in memory

    def __post_init__(self) -> None:
        if self.txt_mode not in ("file", "line"):
            raise ValueError("txt_mode must be 'file' or 'line'")
        if self.max_doc_bytes < 1:
            raise ValueError("max_doc_bytes must be >= 1")
        if self.max_line_bytes < 1:
            raise ValueError("max_line_bytes must be >= 1")
        if self.format is not None and self.format not in FORMAT_REGISTRY:
            raise ValueError(f"format must be one of {tuple(FORMAT_REGISTRY)}")


@dataclass
class Document:
    doc_id: str  # the same for every part of a split document
    data: bytes
    source: str
    offset: int  # byte offset of the line in the decoded stream (jsonl/txt lines), row index (parquet), or
    #              byte offset of the part (binary / txt file mode)
    part: int = 0  # 0, 1, 2...: consecutive pieces of one document longer than max_doc_bytes


@dataclass
class SkipLog:
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    split_documents: int = 0
    input_bytes: int = 0  # consumed by the reader (decoded units for compressed formats)
    kept_bytes: int = 0
    lost_bytes: dict[str, int] = field(default_factory=dict)
    undecodable_bytes: int = 0  # compressed bytes past the point where decoding failed

    def record(self, reason: str, where: int | str, detail: str, lost: int = 0) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if lost:
            self.lose(reason, lost)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"reason": reason, "where": where, "detail": detail[:200]})

    def lose(self, reason: str, nbytes: int) -> None:
        self.lost_bytes[reason] = self.lost_bytes.get(reason, 0) + nbytes

    def keep(self, nbytes: int) -> None:
        self.kept_bytes += nbytes

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def unaccounted_bytes(self) -> int:
        """0 when every consumed byte is kept or lost under a reason (the reader's invariant)."""
        return self.input_bytes - self.kept_bytes - sum(self.lost_bytes.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": list(self.examples), "split_documents": self.split_documents,
                "input_bytes": self.input_bytes, "kept_bytes": self.kept_bytes, "lost_bytes": dict(self.lost_bytes),
                "undecodable_bytes": self.undecodable_bytes}


COMPRESSIONS = {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip"}  # name suffix -> codec of ``_Decoded``


def detect_format(url: str) -> tuple[str, str | None]:
    """(format, compression) from the object name; a name no format claims is read as the fallback format."""
    name = posixpath.basename(url.split("://", 1)[-1]).lower()
    compression = None
    for suffix, comp in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = comp, name[: -len(suffix)]
            break
    for fmt in FORMAT_REGISTRY.values():
        if fmt.suffixes and name.endswith(fmt.suffixes):
            return fmt.name, compression
    return _FALLBACK, compression


def reader_format(url: str, cfg: ReaderConfig) -> tuple[Format, str | None]:
    """The format that reads ``url`` (``cfg.format`` overrides the name) and its compression."""
    name, compression = detect_format(url)
    return FORMAT_REGISTRY[cfg.format or name], compression


def splittable_format(url: str, cfg: ReaderConfig) -> str | None:
    """How an object can be cut into work units: "row_groups", "bytes" (line-aligned) or None (whole)."""
    fmt, compression = reader_format(url, cfg)
    return fmt.split(cfg, compression)


class _Decoded:
    """The decoded bytes of one object, in chunks; remembers where and why decoding failed.

    Reads raw bytes itself and drives a decompressor per zstd frame / gzip member, so it can tell a complete
    stream from one cut anywhere (inside a block, at a block boundary: the last frame never reaches its end).
    """

    def __init__(self, raw: IO[bytes], compression: str | None, size: int) -> None:
        self.raw, self.compression, self.size = raw, compression, size
        self.failure: str | None = None
        self.undecodable = 0  # compressed bytes from the failed frame / member to the end of the object
        self.partial = 0  # decoded bytes of a last line cut by the damage (lost to it)

    def _decompressor(self):
        if self.compression == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zstandard.ZstdDecompressor().decompressobj()

    def _fail(self, detail: str, undecodable: int) -> None:
        self.failure = detail
        self.undecodable = max(0, undecodable)

    def chunks(self) -> Iterator[bytes]:
        self.undecodable = 0
        if self.compression is None:
            while chunk := self.raw.read(_CHUNK):
                yield chunk
            return
        decoder, frame_start, raw_pos, data = None, 0, 0, b""
        while True:
            if not data:
                data = self.raw.read(_CHUNK)
                if not data:
                    break
            if decoder is None:
                decoder, frame_start = self._decompressor(), raw_pos
            try:
                out = decoder.decompress(data)
            except (zlib.error, zstandard.ZstdError, ValueError, MemoryError) as exc:
                self._fail(f"{type(exc).__name__}: {exc}", self.size - frame_start)
                return
            if out:
                yield out
            if decoder.eof:
                rest = decoder.unused_data
                raw_pos += len(data) - len(rest)
                data, decoder = rest, None
            else:
                raw_pos += len(data)
                data = b""
        if decoder is not None:  # the input ended inside a frame / member
            self._fail(f"truncated {self.compression} stream: the last frame ends early at byte {raw_pos}",
                       raw_pos - frame_start)


def read_documents(url: str, cfg: ReaderConfig, log: SkipLog, kind: str = "file", start: int = 0,
                   stop: int | None = None) -> Iterator[Document]:
    """Stream the documents of one object, or of one work unit inside it; problems go to ``log``.

    ``kind`` "row_groups": parquet row groups [start, stop); "bytes": the lines that *start* in [start, stop) of
    an uncompressed line format (so consecutive units read every line exactly once). Missing objects raise
    FileNotFoundError; storage I/O errors propagate; nothing caused by the content raises.
    """
    fmt, compression = reader_format(url, cfg)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as raw:
        size = _object_size(raw)
        if fmt.read_object is not None:
            yield from fmt.read_object(raw, size, url, cfg, log, kind, start, stop)
            return
        if kind == "bytes" and compression is None:
            begin, end = start, size if stop is None else min(stop, size)
        else:
            begin, end = 0, None
        if begin:
            raw.seek(begin - 1)
            aligned = raw.read(1) == b"\n"  # else the line in progress belongs to the previous unit
        else:
            aligned = True
            raw.seek(0)
        source = _Decoded(raw, compression, size)
        try:
            for doc in fmt.read_stream(source, begin, end, aligned, url, cfg, log):
                yield from _split(doc, cfg.max_doc_bytes, log)
        except OSError:
            raise  # storage errors (connection reset, throttling...) are the caller's to retry
        except Exception as exc:  # a reader bug must not cost the job: count what is left unaccounted
            log.record("reader_error", "stream", f"{type(exc).__name__}: {exc}", lost=log.unaccounted_bytes)
            return
        if source.failure is not None:
            log.record("corrupt_compression", "stream", source.failure, lost=source.partial)
            log.undecodable_bytes += source.undecodable


def _object_size(raw: IO[bytes]) -> int:
    size = getattr(raw, "size", None)
    if isinstance(size, int):
        return size
    raw.seek(0, 2)
    size = raw.tell()
    raw.seek(0)
    return size


def _split(doc: Document, limit: int, log: SkipLog) -> Iterator[Document]:
    if len(doc.data) <= limit:
        yield doc
        return
    log.split_documents += 1
    for part, begin in enumerate(range(0, len(doc.data), limit)):
        yield Document(doc.doc_id, doc.data[begin : begin + limit], doc.source, doc.offset, part)


def _shard_name(url: str) -> str:
    return posixpath.basename(url.split("://", 1)[-1])


def _lines(source: _Decoded, begin: int, end: int | None, aligned: bool, max_line: int, log: SkipLog
           ) -> Iterator[tuple[int, bytes | None, int, bool]]:
    """(offset, line or None when longer than max_line, bytes consumed, ends with a newline) for each line
    that starts in [begin, end). ``aligned`` False: skip the line in progress at ``begin`` (not ours)."""
    skipping = not aligned
    pos = begin  # offset of the next unread byte
    line_start, parts, held, too_long = begin, [], 0, False
    for chunk in source.chunks():
        view, at = memoryview(chunk), 0
        if skipping:
            idx = chunk.find(b"\n")
            if idx < 0:
                pos += len(chunk)
                continue
            at, skipping = idx + 1, False
            line_start = pos + at
        while True:
            if end is not None and line_start >= end and not parts and not too_long:
                return
            idx = chunk.find(b"\n", at)
            piece_end = len(chunk) if idx < 0 else idx + 1
            piece_len = piece_end - at
            if not too_long and held + piece_len > max_line:
                too_long, parts = True, []
            if not too_long:
                parts.append(view[at:piece_end])
            held += piece_len
            at = piece_end
            if idx < 0:
                break
            log.input_bytes += held
            yield line_start, (None if too_long else b"".join(parts)), held, True
            line_start += held
            parts, held, too_long = [], 0, False
        pos += len(chunk)
        if parts:  # keep the unfinished line independent of the chunk buffer
            parts = [b"".join(parts)]
    if held and not skipping and (end is None or line_start < end):
        log.input_bytes += held
        yield line_start, (None if too_long else b"".join(parts)), held, False


def _damaged_tail(source: _Decoded, terminated: bool, nbytes: int) -> bool:
    """The unterminated last line of a stream whose decoding failed is lost to the damage, not parsed."""
    if terminated or source.failure is None:
        return False
    source.partial = nbytes
    return True


def _usable_lines(source: _Decoded, begin: int, end: int | None, aligned: bool, cfg: ReaderConfig,
                  log: SkipLog) -> Iterator[tuple[int, bytes, int]]:
    """(offset, line, stored bytes) of each line a line format may parse: over-long lines are skipped as
    ``line_too_long`` and a last line cut by damaged compression is lost to the damage."""
    for offset, line, nbytes, terminated in _lines(source, begin, end, aligned, cfg.max_line_bytes, log):
        if _damaged_tail(source, terminated, nbytes):
            continue
        if line is None:
            log.record("line_too_long", offset, f"line longer than {cfg.max_line_bytes} bytes", lost=nbytes)
            continue
        yield offset, line, nbytes


def _jsonl(source: _Decoded, begin: int, end: int | None, aligned: bool, url: str, cfg: ReaderConfig,
           log: SkipLog) -> Iterator[Document]:
    name = _shard_name(url)
    for offset, line, nbytes in _usable_lines(source, begin, end, aligned, cfg, log):
        if not line.strip():
            log.keep(nbytes)  # blank lines are framing
            continue
        doc = _json_document(line, offset, name, url, cfg, log, nbytes)
        if doc is not None:
            log.keep(nbytes)
            yield doc


def _json_document(line: bytes, offset: int, name: str, url: str, cfg: ReaderConfig, log: SkipLog,
                   nbytes: int) -> Document | None:
    """One JSONL record -> a Document, or None with the record's skip logged. Never raises."""
    try:
        record = json.loads(line)
    except Exception as exc:  # JSONDecodeError, UnicodeDecodeError, RecursionError (deep nesting), MemoryError...
        log.record("invalid_json", offset, f"{type(exc).__name__}: {exc}", lost=nbytes)
        return None
    if not isinstance(record, dict):
        log.record("invalid_json", offset, "line is not a JSON object", lost=nbytes)
        return None
    if cfg.text_field not in record:
        log.record("missing_text_field", offset, f"no {cfg.text_field!r} field", lost=nbytes)
        return None
    text = record[cfg.text_field]
    if not isinstance(text, str):
        log.record("invalid_text_type", offset, f"{cfg.text_field!r} is {type(text).__name__}", lost=nbytes)
        return None
    if not text:
        log.record("empty_document", offset, "empty text", lost=nbytes)
        return None
    try:
        doc_id = record.get(cfg.id_field)
        doc_id = f"{name}:{offset}" if doc_id is None else str(doc_id)
        data = text.encode("utf-8", errors="surrogatepass")
    except Exception as exc:  # e.g. an id whose str() fails on a huge int
        log.record("invalid_json", offset, f"{type(exc).__name__}: {exc}", lost=nbytes)
        return None
    return Document(doc_id, data, url, offset)


def _txt_lines(source: _Decoded, begin: int, end: int | None, aligned: bool, url: str, cfg: ReaderConfig,
               log: SkipLog) -> Iterator[Document]:
    name = _shard_name(url)
    for offset, line, nbytes in _usable_lines(source, begin, end, aligned, cfg, log):
        data = line.rstrip(b"\r\n")
        if not data:
            log.record("empty_document", offset, f"{name}:{offset}", lost=nbytes)
            continue
        log.keep(nbytes)
        yield Document(f"{name}:{offset}", data, url, offset)


def _chunks(source: _Decoded, url: str, limit: int, log: SkipLog) -> Iterator[Document]:
    """A whole object as one document, read in pieces of ``limit`` bytes (consecutive parts when longer)."""
    name = _shard_name(url)
    buffer, part, offset = bytearray(), 0, 0
    for chunk in source.chunks():
        log.input_bytes += len(chunk)
        buffer += chunk
        while len(buffer) > limit:  # strictly more: a document of exactly ``limit`` bytes stays one part
            log.keep(limit)
            if part == 1:
                log.split_documents += 1
            yield Document(name, bytes(buffer[:limit]), url, offset, part)
            del buffer[:limit]
            part, offset = part + 1, offset + limit
    if buffer:
        if part == 1:
            log.split_documents += 1
        log.keep(len(buffer))
        yield Document(name, bytes(buffer), url, offset, part)
    elif part == 0 and source.failure is None:  # an undecodable object is reported as corrupt, not empty
        log.record("empty_document", 0, name)


def _parquet(raw: IO[bytes], size: int, url: str, cfg: ReaderConfig, log: SkipLog,
             row_groups: tuple[int, int | None] | None) -> Iterator[Document]:
    """Rows of the object (or of row groups [first, stop)); accounted in stored bytes per row group."""
    name = _shard_name(url)
    first = row_groups[0] if row_groups else 0
    try:
        parquet = pq.ParquetFile(raw)
        meta = parquet.metadata
        count = meta.num_row_groups
        stop = count if row_groups is None or row_groups[1] is None else min(row_groups[1], count)
        rg_bytes = [sum(meta.row_group(i).column(j).total_compressed_size for j in range(meta.num_columns))
                    for i in range(count)]
        framing = max(0, size - sum(rg_bytes)) if first == 0 else 0
        row = sum(meta.row_group(i).num_rows for i in range(min(first, count)))
        columns = parquet.schema_arrow.names
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        _unreadable(log, size if first == 0 else 0, exc)
        return
    except Exception as exc:  # ArrowInvalid and anything else a damaged footer makes pyarrow raise
        _unreadable(log, size if first == 0 else 0, exc)
        return
    unit_bytes = framing + sum(rg_bytes[first:stop])
    log.input_bytes += unit_bytes
    if cfg.text_field not in columns:
        log.record("missing_text_field", "schema", f"no column {cfg.text_field!r} (has {columns})", lost=unit_bytes)
        return
    log.keep(framing)
    wanted = [cfg.text_field] + ([cfg.id_field] if cfg.id_field in columns else [])
    for group in range(first, stop):
        rows = meta.row_group(group).num_rows
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group], columns=wanted):
                texts = batch.column(cfg.text_field)
                is_binary = pa.types.is_binary(texts.type) or pa.types.is_large_binary(texts.type)
                if not (is_binary or pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
                    lost = sum(rg_bytes[group:stop])
                    log.record("invalid_text_type", "schema", f"column {cfg.text_field!r} has type {texts.type}",
                               lost=lost)
                    return
                ids = batch.column(cfg.id_field).to_pylist() if cfg.id_field in wanted else None
                for i, value in enumerate(texts.to_pylist()):
                    if value is None:
                        log.record("missing_text_field", row + done + i, "null value")
                        continue
                    data = value if is_binary else value.encode("utf-8", errors="surrogatepass")
                    if not data:
                        log.record("empty_document", row + done + i, "empty text")
                        continue
                    doc_id = str(ids[i]) if ids is not None and ids[i] is not None else f"{name}:{row + done + i}"
                    yield Document(doc_id, data, url, row + done + i)
                done += batch.num_rows
        except Exception as exc:  # a damaged page / row group: rows not read are lost, in proportion
            if isinstance(exc, FileNotFoundError):
                raise
            lost = rg_bytes[group] - rg_bytes[group] * min(done, rows) // max(rows, 1)
            log.keep(rg_bytes[group] - lost)
            log.record("corrupt_row_group", f"row group {group}", f"{type(exc).__name__}: {exc}", lost=lost)
        else:
            log.keep(rg_bytes[group])
        row += rows


def _unreadable(log: SkipLog, nbytes: int, exc: BaseException) -> None:
    log.input_bytes += nbytes
    log.record("unreadable_object", "file", f"{type(exc).__name__}: {exc}", lost=nbytes)


# ---------------------------------------------------------------------------------------------- format registry
StreamReader = Callable[["_Decoded", int, "int | None", bool, str, ReaderConfig, SkipLog], Iterator[Document]]
ObjectReader = Callable[[IO[bytes], int, str, ReaderConfig, SkipLog, str, int, "int | None"], Iterator[Document]]


@dataclass(frozen=True)
class Format:
    """One input format: the names that select it, how it reads, and how a large object may be cut into units.

    A stream format reads the decoded byte stream (any compression); an object format reads the stored object
    itself. ``split(cfg, compression)`` is "row_groups", "bytes" (line-aligned byte ranges) or None (whole)."""

    name: str
    suffixes: tuple[str, ...]  # matched after a compression suffix is removed; () for the fallback format
    read_stream: StreamReader | None = None
    read_object: ObjectReader | None = None
    split: Callable[[ReaderConfig, str | None], str | None] = lambda cfg, compression: None


FORMAT_REGISTRY: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    if (fmt.read_stream is None) == (fmt.read_object is None):
        raise ValueError(f"format {fmt.name!r} needs exactly one of read_stream / read_object")
    FORMAT_REGISTRY[fmt.name] = fmt
    return fmt


def _lines_split(cfg: ReaderConfig, compression: str | None) -> str | None:
    return "bytes" if compression is None else None  # a compressed stream cannot be entered in the middle


def _txt_split(cfg: ReaderConfig, compression: str | None) -> str | None:
    return _lines_split(cfg, compression) if cfg.txt_mode == "line" else None  # file mode: one document each


def _txt(source: _Decoded, begin: int, end: int | None, aligned: bool, url: str, cfg: ReaderConfig,
         log: SkipLog) -> Iterator[Document]:
    if cfg.txt_mode == "line":
        return _txt_lines(source, begin, end, aligned, url, cfg, log)
    return _chunks(source, url, cfg.max_doc_bytes, log)


def _binary(source: _Decoded, begin: int, end: int | None, aligned: bool, url: str, cfg: ReaderConfig,
            log: SkipLog) -> Iterator[Document]:
    return _chunks(source, url, cfg.max_doc_bytes, log)


def _parquet_unit(raw: IO[bytes], size: int, url: str, cfg: ReaderConfig, log: SkipLog, kind: str, start: int,
                  stop: int | None) -> Iterator[Document]:
    return _parquet(raw, size, url, cfg, log, (start, stop) if kind == "row_groups" else None)


register_format(Format("jsonl", (".jsonl", ".json", ".ndjson"), read_stream=_jsonl, split=_lines_split))
register_format(Format("txt", (".txt",), read_stream=_txt, split=_txt_split))
register_format(Format("parquet", (".parquet",), read_object=_parquet_unit, split=lambda cfg, compression: "row_groups"))
register_format(Format("binary", (), read_stream=_binary))
_FALLBACK = "binary"
FORMATS = tuple(FORMAT_REGISTRY)
