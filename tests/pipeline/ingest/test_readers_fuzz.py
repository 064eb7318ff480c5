"""Readers survive anything: damaged files of every format end as documents or counted skips, never an exception.

Each case damages a valid object (truncation, bit flips, appended garbage, deep nesting, huge lines, invalid
UTF-8, zero length) and checks the invariant: the reader does not raise, and every byte it consumed is kept or
lost under a reason (``kept_bytes + sum(lost_bytes) == input_bytes``), where ``input_bytes`` is the object's size
(uncompressed formats, parquet) or the decoded length of the decodable prefix (compressed). Compressed streams
cut anywhere but at a frame / member boundary report ``corrupt_compression`` and keep every document before the
cut. Damaged variants per run: 2,402 truncations (every cut point of a multi-frame .zst and .gz stream), 500
from hypothesis (100 flipped and 100 garbage-appended compressed streams, 100 bad lines in jsonl/.zst/.gz, 100
damaged uncompressed jsonl/txt/binary, 100 damaged parquet), 9 zero-length objects: about 2,900.
"""

from __future__ import annotations

import gzip
import io
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from corpus import jsonl_bytes, make_docs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents

MAX_LINE = 16384
CFG = ReaderConfig(max_doc_bytes=100, max_line_bytes=MAX_LINE)
DOCS = make_docs(11, 25)
CONTENT = jsonl_bytes(DOCS)
TEXTS = [d["text"].encode() for d in DOCS]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def frames(content: bytes, compression: str, size: int = 300) -> tuple[bytes, list[int]]:
    """``content`` compressed as several frames / members of ``size`` decoded bytes (cut mid-line), and the
    compressed offsets where frames end."""
    out, ends = b"", []
    for start in range(0, max(len(content), 1), size):
        piece = content[start : start + size]
        out += zstandard.ZstdCompressor().compress(piece) if compression == "zstd" else gzip.compress(piece)
        ends.append(len(out))
    return out, ends


def read(tmp_path, name: str, data: bytes, cfg: ReaderConfig = CFG) -> tuple[list, SkipLog]:
    path = tmp_path / name
    path.write_bytes(data)
    log = SkipLog()
    docs = list(read_documents(str(path), cfg, log))  # must never raise
    assert log.unaccounted_bytes == 0, log.to_dict()
    assert all(d.data for d in docs)
    return docs, log


def joined(docs) -> list[bytes]:
    """Document texts with parts joined (parts share doc_id and come in order)."""
    out: list[bytes] = []
    for d in docs:
        if d.part:
            out[-1] += d.data
        else:
            out.append(d.data)
    return out


def decoded_prefix(data: bytes, compression: str) -> bytes:
    """Reference decode: every byte a streaming decoder can produce before the damage."""
    out, rest = b"", data
    while rest:
        dec = zstandard.ZstdDecompressor().decompressobj() if compression == "zstd" else zlib.decompressobj(31)
        try:
            out += dec.decompress(rest)
        except (zstandard.ZstdError, zlib.error):
            break
        if not dec.eof:
            break
        rest = dec.unused_data
    return out


SUFFIX = {"zstd": ".jsonl.zst", "gzip": ".jsonl.gz"}


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_every_truncation_of_a_compressed_stream(tmp_path, compression):
    """Exhaustive: every cut point of a multi-frame stream."""
    data, ends = frames(jsonl_bytes(DOCS[:8]), compression, 150)
    for cut in range(len(data) + 1):
        docs, log = read(tmp_path, "t" + SUFFIX[compression], data[:cut])
        texts = joined(docs)
        assert texts == TEXTS[: len(texts)]  # documents before the damage are kept, in order
        prefix = decoded_prefix(data[:cut], compression)
        assert log.input_bytes == len(prefix)
        complete_lines = prefix.count(b"\n")
        if cut == 0 or cut in ends:  # a clean stream (possibly shorter): nothing to detect but a cut last line
            assert "corrupt_compression" not in log.counts
            assert len(texts) == complete_lines
            assert set(log.counts) <= {"invalid_json"}
        else:
            assert log.counts.get("corrupt_compression") == 1, (cut, log.to_dict())
            assert len(texts) == complete_lines and set(log.counts) == {"corrupt_compression"}
            assert log.lost_bytes.get("corrupt_compression", 0) == len(prefix) - prefix.rfind(b"\n") - 1
            assert 0 < log.undecodable_bytes <= cut


@FUZZ
@given(compression=st.sampled_from(["zstd", "gzip"]), flips=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
       garbage=st.binary(max_size=40), multi=st.booleans())
def test_compressed_bit_flips_and_garbage(tmp_path, compression, flips, garbage, multi):
    data, _ = frames(CONTENT, compression, 300 if multi else 10**9)
    damaged = bytearray(data)
    for flip in flips:
        damaged[flip % len(damaged)] ^= 1 << (flip % 8)
    docs, log = read(tmp_path, "f" + SUFFIX[compression], bytes(damaged) + garbage)
    assert log.input_bytes <= len(decoded_prefix(bytes(damaged) + garbage, compression)) + len(CONTENT)
    # Garbage after an intact stream: every document kept, the garbage reported.
    docs, log = read(tmp_path, "g" + SUFFIX[compression], data + garbage)
    assert joined(docs) == TEXTS
    assert ("corrupt_compression" in log.counts) == bool(garbage)
    assert log.undecodable_bytes == len(garbage)


def damage_lines(content: bytes, kind: str, where: int, payload: bytes) -> tuple[bytes, int]:
    """Insert one damaged line after line ``where``; returns (content, index of the damaged line)."""
    lines = content.splitlines(keepends=True)
    at = where % (len(lines) + 1)
    line = {
        "deep": b'{"text": "x", "meta": ' + b"[" * 5_000 + b"]" * 5_000 + b"}\n",
        "deep_open": b"[" * 10_000 + b"\n",
        "huge": b'{"text": "' + b"h" * (MAX_LINE + 10 + len(payload)) + b'"}\n',
        "utf8": b'{"text": "' + payload.replace(b'"', b"").replace(b"\\", b"").replace(b"\n", b"") + b'\xff\xfe"}\n',
        "binary": payload.replace(b"\n", b"") + b"\n",
    }[kind]
    return b"".join(lines[:at] + [line] + lines[at:]), at


@FUZZ
@given(kind=st.sampled_from(["deep", "deep_open", "huge", "utf8", "binary"]), where=st.integers(0, 100),
       payload=st.binary(max_size=60), compression=st.sampled_from([None, "zstd", "gzip"]))
def test_bad_lines_cost_only_themselves(tmp_path, kind, where, payload, compression):
    content, _ = damage_lines(CONTENT, kind, where, payload)
    if compression == "zstd":
        data, name = zstandard.ZstdCompressor().compress(content), "b.jsonl.zst"
    elif compression == "gzip":
        data, name = gzip.compress(content), "b.jsonl.gz"
    else:
        data, name = content, "b.jsonl"
    docs, log = read(tmp_path, name, data)
    assert log.input_bytes == len(content)
    texts = joined(docs)
    good = [t for t in texts if t in TEXTS]
    assert good == TEXTS  # every intact record survives the bad one
    assert len(texts) - len(good) <= 1 and log.total <= 1
    if kind == "huge":
        assert log.counts == {"line_too_long": 1} and log.lost_bytes["line_too_long"] > MAX_LINE
    if kind in ("deep", "deep_open"):
        assert log.counts == {"invalid_json": 1}


@FUZZ
@given(cut=st.integers(0, 10**6), flips=st.lists(st.integers(0, 10**6), max_size=3), garbage=st.binary(max_size=30),
       mode=st.sampled_from(["jsonl", "txt_line", "txt_file", "binary"]))
def test_uncompressed_damage(tmp_path, cut, flips, garbage, mode):
    damaged = bytearray(CONTENT[: cut % (len(CONTENT) + 1)])
    for flip in flips:
        if damaged:
            damaged[flip % len(damaged)] ^= 1 << (flip % 8)
    data = bytes(damaged) + garbage
    name, cfg = {"jsonl": ("u.jsonl", CFG), "txt_line": ("u.txt", ReaderConfig(txt_mode="line", max_doc_bytes=50)),
                 "txt_file": ("u.txt", CFG), "binary": ("u.bin", CFG)}[mode]
    docs, log = read(tmp_path, name, data, cfg)
    assert log.input_bytes == len(data)
    if mode in ("txt_file", "binary"):
        assert b"".join(d.data for d in docs) == data and log.kept_bytes == len(data)
        assert len({d.doc_id for d in docs}) <= 1 and [d.part for d in docs] == list(range(len(docs)))
    if mode == "jsonl" and not flips and not garbage:
        texts = joined(docs)
        assert texts == TEXTS[: len(texts)] and len(texts) >= bytes(damaged).count(b"\n")


def parquet_bytes(row_group_size: int = 8) -> bytes:
    sink = io.BytesIO()
    table = pa.table({"text": [d["text"] for d in DOCS], "id": [d["id"] for d in DOCS]})
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


PARQUET = parquet_bytes()


@FUZZ
@given(cut=st.integers(0, 10**6), flips=st.lists(st.integers(0, 10**6), max_size=4), garbage=st.binary(max_size=30))
def test_parquet_damage(tmp_path, cut, flips, garbage):
    damaged = bytearray(PARQUET[: cut % (len(PARQUET) + 1)])
    for flip in flips:
        if damaged:
            damaged[flip % len(damaged)] ^= 1 << (flip % 8)
    data = bytes(damaged) + garbage
    docs, log = read(tmp_path, "p.parquet", data)
    assert log.input_bytes == len(data)
    if len(data) < len(PARQUET) or garbage:  # the footer is gone or not at the end
        assert docs == [] and log.counts == {"unreadable_object": 1}
        assert log.lost_bytes.get("unreadable_object", 0) == len(data) == log.input_bytes


def test_parquet_intact_and_unit_accounting(tmp_path):
    docs, log = read(tmp_path, "p.parquet", PARQUET)
    assert joined(docs) == TEXTS and log.kept_bytes == len(PARQUET) and log.total == 0


@pytest.mark.parametrize("name,cfg", [("z.jsonl", CFG), ("z.jsonl.zst", CFG), ("z.jsonl.gz", CFG),
                                      ("z.txt", CFG), ("z.txt", ReaderConfig(txt_mode="line")), ("z.txt.gz", CFG),
                                      ("z.parquet", CFG), ("z.bin", CFG), ("z.bin.zst", CFG)])
def test_zero_length_objects(tmp_path, name, cfg):
    docs, log = read(tmp_path, name, b"", cfg)
    assert docs == [] and log.input_bytes == 0
    assert set(log.counts) <= {"empty_document", "unreadable_object"}


def test_missing_object_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_documents(str(tmp_path / "nope.jsonl"), CFG, SkipLog()))
