"""A reader is one registry entry: its suffixes, its reader and its split rule are all the pipeline needs."""

from __future__ import annotations

import pytest

from pipeline.ingest.readers import (
    FORMAT_REGISTRY,
    FORMATS,
    Document,
    Format,
    ReaderConfig,
    SkipLog,
    detect_format,
    read_documents,
    register_format,
    splittable_format,
)


def test_builtin_formats_and_their_split_rules():
    assert FORMATS == ("jsonl", "txt", "parquet", "binary")
    assert detect_format("s3://b/raw/x.NDJSON.zst") == ("jsonl", "zstd")
    assert detect_format("/d/file.bin") == ("binary", None)
    line = ReaderConfig(txt_mode="line")
    assert splittable_format("/d/a.jsonl", ReaderConfig()) == "bytes"
    assert splittable_format("/d/a.jsonl.gz", ReaderConfig()) is None
    assert splittable_format("/d/a.txt", ReaderConfig()) is None
    assert splittable_format("/d/a.txt", line) == "bytes"
    assert splittable_format("/d/a.parquet", ReaderConfig()) == "row_groups"
    assert splittable_format("/d/a.bin", ReaderConfig(format="jsonl")) == "bytes"


@pytest.fixture
def upper_format():
    """A toy format: each line upper-cased is one document."""

    def read(source, begin, end, aligned, url, cfg, log):
        for offset, chunk in enumerate(b"".join(source.chunks()).splitlines()):
            log.input_bytes += len(chunk)
            log.keep(len(chunk))
            yield Document(f"u{offset}", chunk.upper(), url, offset)

    register_format(Format("upper", (".up",), read_stream=read))
    yield
    del FORMAT_REGISTRY["upper"]


def test_a_registered_format_is_detected_validated_and_read(tmp_path, upper_format):
    path = tmp_path / "x.up"
    path.write_bytes(b"ab\ncd\n")
    assert detect_format(str(path)) == ("upper", None)
    assert splittable_format(str(path), ReaderConfig()) is None
    docs = list(read_documents(str(path), ReaderConfig(format="upper"), SkipLog()))
    assert [d.data for d in docs] == [b"AB", b"CD"]


def test_unknown_format_and_half_defined_format_are_rejected():
    with pytest.raises(ValueError, match="format must be one of"):
        ReaderConfig(format="csv")
    with pytest.raises(ValueError, match="exactly one of"):
        register_format(Format("broken", (".x",)))
