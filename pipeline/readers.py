"""Streaming document readers for raw shards: jsonl(.gz/.zst), txt, parquet, raw binary.

Every reader yields ``Document``s and records what it could not use in a ``SkipLog`` (counts per reason plus
the first few examples) instead of raising, so one bad line never stops a job. Memory stays bounded by one
line / one parquet batch / one ``max_doc_bytes`` piece, whatever the shard size.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from .storage import filesystem

FORMATS = ("jsonl", "txt", "parquet", "binary")
MAX_EXAMPLES = 5


@dataclass
class ReaderConfig:
    text_field: str = "text"
    id_field: str = "id"
    txt_mode: str = "file"  # "file": one document per file; "line": one per line
    max_doc_bytes: int = 1 << 20  # longer documents are split into parts of this size (never truncated)
    format: str | None = None  # None: from the file name

    def __post_init__(self) -> None:
        if self.txt_mode not in ("file", "line"):
            raise ValueError("txt_mode must be 'file' or 'line'")
        if self.max_doc_bytes < 1:
            raise ValueError("max_doc_bytes must be >= 1")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")


@dataclass
class Document:
    doc_id: str
    data: bytes
    source: str
    offset: int  # line number (jsonl/txt lines), row index (parquet) or byte offset (binary/txt file)
    part: int = 0


@dataclass
class SkipLog:
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    split_documents: int = 0

    def record(self, reason: str, where: int | str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"reason": reason, "where": where, "detail": detail[:200]})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": list(self.examples), "split_documents": self.split_documents}


def detect_format(url: str) -> tuple[str, str | None]:
    """(format, compression) from the object name."""
    name = posixpath.basename(url.split("://", 1)[-1]).lower()
    compression = None
    for suffix, comp in ((".zst", "zstd"), (".zstd", "zstd"), (".gz", "gzip")):
        if name.endswith(suffix):
            compression, name = comp, name[: -len(suffix)]
            break
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", compression
    if name.endswith(".txt"):
        return "txt", compression
    if name.endswith(".parquet"):
        return "parquet", compression
    return "binary", compression


def _decompressed(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if compression == "zstd":
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


_CORRUPT = (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError)


def _split(doc: Document, limit: int, log: SkipLog) -> Iterator[Document]:
    if len(doc.data) <= limit:
        yield doc
        return
    log.split_documents += 1
    for part, start in enumerate(range(0, len(doc.data), limit)):
        yield Document(f"{doc.doc_id}#p{part}", doc.data[start : start + limit], doc.source, doc.offset, part)


def read_documents(url: str, cfg: ReaderConfig, log: SkipLog) -> Iterator[Document]:
    """Stream the documents of one shard; problems go to ``log``. Missing objects raise FileNotFoundError."""
    fmt, compression = detect_format(url)
    fmt = cfg.format or fmt
    fs, path = filesystem(url)
    with fs.open(path, "rb") as raw:
        stream = _decompressed(raw, compression)
        try:
            if fmt == "jsonl":
                docs = _jsonl(stream, url, cfg, log)
            elif fmt == "txt":
                docs = _txt(stream, url, cfg, log)
            elif fmt == "parquet":
                docs = _parquet(stream, url, cfg, log)
            else:
                docs = _chunks(stream, url, _shard_name(url), cfg.max_doc_bytes, log)
            for doc in docs:
                if not doc.data:
                    log.record("empty_document", doc.offset, doc.doc_id)
                    continue
                yield from _split(doc, cfg.max_doc_bytes, log)
        except _CORRUPT as exc:
            log.record("corrupt_compression", "stream", f"{type(exc).__name__}: {exc}")
        except pa.ArrowInvalid as exc:
            log.record("unreadable_object", "file", str(exc))


def _shard_name(url: str) -> str:
    return posixpath.basename(url.split("://", 1)[-1])


def _jsonl(stream: IO[bytes], url: str, cfg: ReaderConfig, log: SkipLog) -> Iterator[Document]:
    name = _shard_name(url)
    for line_no, line in enumerate(stream):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.record("invalid_json", line_no, str(exc))
            continue
        if not isinstance(record, dict):
            log.record("invalid_json", line_no, "line is not a JSON object")
            continue
        if cfg.text_field not in record:
            log.record("missing_text_field", line_no, f"no {cfg.text_field!r} field")
            continue
        text = record[cfg.text_field]
        if not isinstance(text, str):
            log.record("invalid_text_type", line_no, f"{cfg.text_field!r} is {type(text).__name__}")
            continue
        doc_id = str(record.get(cfg.id_field, f"{name}:{line_no}"))
        yield Document(doc_id, text.encode("utf-8", errors="surrogatepass"), url, line_no)


def _txt(stream: IO[bytes], url: str, cfg: ReaderConfig, log: SkipLog) -> Iterator[Document]:
    name = _shard_name(url)
    if cfg.txt_mode == "line":
        for line_no, line in enumerate(stream):
            yield Document(f"{name}:{line_no}", line.rstrip(b"\r\n"), url, line_no)
        return
    yield from _chunks(stream, url, name, cfg.max_doc_bytes, log)


def _chunks(stream: IO[bytes], url: str, name: str, limit: int, log: SkipLog) -> Iterator[Document]:
    """A whole object as one document, read in pieces of ``limit`` bytes (parts when longer)."""
    first = stream.read(limit)
    second = stream.read(limit) if first else b""
    if not second:
        yield Document(name, first, url, 0)
        return
    log.split_documents += 1
    part, offset, chunk = 0, 0, first
    while chunk:
        yield Document(f"{name}#p{part}", chunk, url, offset, part)
        offset += len(chunk)
        part += 1
        chunk, second = second, (stream.read(limit) if second else b"")


def _parquet(stream: IO[bytes], url: str, cfg: ReaderConfig, log: SkipLog) -> Iterator[Document]:
    name = _shard_name(url)
    parquet = pq.ParquetFile(stream)
    columns = parquet.schema_arrow.names
    if cfg.text_field not in columns:
        log.record("missing_text_field", "schema", f"no column {cfg.text_field!r} (has {columns})")
        return
    wanted = [cfg.text_field] + ([cfg.id_field] if cfg.id_field in columns else [])
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
        texts = batch.column(cfg.text_field)
        is_binary = pa.types.is_binary(texts.type) or pa.types.is_large_binary(texts.type)
        if not (is_binary or pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            log.record("invalid_text_type", "schema", f"column {cfg.text_field!r} has type {texts.type}")
            return
        ids = batch.column(cfg.id_field).to_pylist() if cfg.id_field in wanted else None
        for i, value in enumerate(texts.to_pylist()):
            if value is None:
                log.record("missing_text_field", row + i, "null value")
                continue
            data = value if is_binary else value.encode("utf-8", errors="surrogatepass")
            doc_id = str(ids[i]) if ids is not None and ids[i] is not None else f"{name}:{row + i}"
            yield Document(doc_id, data, url, row + i)
        row += batch.num_rows
