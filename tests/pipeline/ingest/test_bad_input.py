"""Bad input never crashes a job or disappears silently: each kind becomes a counted skip record."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus import jsonl_bytes, save_tiny_entropy_model, write_object

from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents
from pipeline.io.storage import StorageError
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import StrictModeError, run_preprocess


def lines_of_mixed() -> list:
    good = {"id": "m0", "text": "good document number 0"}
    return [good, "{not json", '["a list"]', {"id": "nt"}, {"id": "num", "text": 7},
            {"id": "empty", "text": ""}, {"id": "big", "text": "x" * 2500}, {"id": "ok", "text": "fine"}]


@pytest.fixture
def corpus(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = [{"id": f"g{i}", "text": f"good document number {i}"} for i in range(5)]
    write_object(str(raw / "good.jsonl"), jsonl_bytes(good))
    write_object(str(raw / "mixed.jsonl.gz"), jsonl_bytes(lines_of_mixed()), "gzip")
    compressed = bytearray(__import__("zstandard").ZstdCompressor().compress(jsonl_bytes(good * 200)))
    compressed[len(compressed) // 2 :] = b"\x00" * (len(compressed) - len(compressed) // 2)
    write_object(str(raw / "corrupt.jsonl.zst"), bytes(compressed))
    # One line json rejects with RecursionError, and an interrupted upload of a .zst: neither may cost the job.
    write_object(str(raw / "deep.jsonl"), b"[" * 100_000 + b"\n" + jsonl_bytes([{"id": "d1", "text": "after"}]))
    whole = __import__("zstandard").ZstdCompressor().compress(jsonl_bytes(good * 200))
    write_object(str(raw / "truncated.jsonl.zst"), whole[: len(whole) * 6 // 10])
    pq.write_table(pa.table({"body": ["a", "b"]}), str(raw / "nocolumn.parquet"))
    pq.write_table(pa.table({"text": [b"\x00\xffbinary", None], "id": ["b0", "b1"]}), str(raw / "bin.parquet"))
    (raw / "notes.txt").write_text("line one\n\nline three\n")
    return raw


def test_reader_skip_records(corpus):
    log = SkipLog()
    docs = list(read_documents(str(corpus / "mixed.jsonl.gz"), ReaderConfig(max_doc_bytes=1000), log))
    assert [(d.doc_id, d.part) for d in docs] == [("m0", 0), ("big", 0), ("big", 1), ("big", 2), ("ok", 0)]
    assert b"".join(d.data for d in docs if d.doc_id == "big") == b"x" * 2500  # split, not truncated
    assert log.counts == {"invalid_json": 2, "missing_text_field": 1, "invalid_text_type": 1, "empty_document": 1}
    assert log.split_documents == 1
    assert {e["reason"] for e in log.examples} == set(log.counts)
    raw_lines = jsonl_bytes(["{not json", '["a list"]']).splitlines(keepends=True)
    assert log.lost_bytes["invalid_json"] == sum(len(line) for line in raw_lines)
    assert log.input_bytes == len(jsonl_bytes(lines_of_mixed())) and log.unaccounted_bytes == 0

    log = SkipLog()
    docs = list(read_documents(str(corpus / "corrupt.jsonl.zst"), ReaderConfig(), log))
    assert log.counts == {"corrupt_compression": 1}
    assert len(docs) < 1000  # what was readable before the damage is kept, and the damage is recorded
    assert log.undecodable_bytes > 0 and log.unaccounted_bytes == 0

    log = SkipLog()
    assert list(read_documents(str(corpus / "nocolumn.parquet"), ReaderConfig(), log)) == []
    assert log.counts == {"missing_text_field": 1}

    log = SkipLog()
    docs = list(read_documents(str(corpus / "bin.parquet"), ReaderConfig(), log))
    assert [(d.doc_id, d.data) for d in docs] == [("b0", b"\x00\xffbinary")]
    assert log.counts == {"missing_text_field": 1}

    log = SkipLog()
    docs = list(read_documents(str(corpus / "notes.txt"), ReaderConfig(txt_mode="line"), log))
    assert [d.data for d in docs] == [b"line one", b"line three"] and log.counts == {"empty_document": 1}


def test_job_records_skips_and_strict_fails(corpus, tmp_path):
    model_url = str(tmp_path / "em")
    save_tiny_entropy_model(model_url)
    cfg = PreprocessConfig(inputs=str(corpus), output=str(tmp_path / "ds"), entropy_model=model_url,
                           reader=ReaderConfig(max_doc_bytes=1000), span=64, use_ray=False)
    manifest = run_preprocess(cfg)
    totals = manifest.totals()
    assert totals["skipped"] == {"invalid_json": 3, "missing_text_field": 3, "invalid_text_type": 1,
                                 "empty_document": 1, "corrupt_compression": 2}
    assert manifest.shards[str(corpus / "deep.jsonl")].docs == 1
    truncated = manifest.shards[str(corpus / "truncated.jsonl.zst")].skips
    assert truncated["counts"] == {"corrupt_compression": 1} and truncated["undecodable_bytes"] > 0
    good_docs = manifest.shards[str(corpus / "good.jsonl")].docs
    assert good_docs == 5
    saved = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert saved["shards"][str(corpus / "mixed.jsonl.gz")]["skips"]["counts"]["invalid_json"] == 2
    with pytest.raises(StrictModeError):
        run_preprocess(PreprocessConfig(**{**cfg.__dict__, "output": str(tmp_path / "ds2"), "strict": True}))


def test_missing_input_is_one_clear_line(tmp_path):
    with pytest.raises(StorageError, match="no input objects match"):
        run_preprocess(PreprocessConfig(inputs=str(tmp_path / "nothing/*.jsonl"), output=str(tmp_path / "o"),
                                        entropy_model=str(tmp_path / "em"), use_ray=False))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", "--inputs", str(tmp_path / "nope/*.jsonl"), "--output",
         str(tmp_path / "o"), "--entropy-model", str(tmp_path / "em"), "--no-ray"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no input objects match" in proc.stderr
