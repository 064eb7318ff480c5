"""Reading overlapped with scoring: a reader thread hands document batches to the scoring thread.

Checked: the shards are byte-identical to reading and scoring in one thread (multi-batch unit, .zst input, a
document split by ``max_doc_bytes`` across flushes); a reader error reaches the caller as the very exception (a
``PermissionError`` still becomes the same ``access_denied`` skip); a scoring error stops the reader; the reader
thread never outlives its unit; the queue stays bounded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

import pipeline.preprocess.entropy_stage as entropy_stage
from pipeline.ingest.readers import ReaderConfig
from pipeline.ingest.work_units import WorkUnit
from pipeline.io.background import BackgroundIterator
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.entropy_stage import ShardProcessor, document_batches

LIMIT = 200  # max_doc_bytes
READER = "preprocess-reader"


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == READER]


@pytest.fixture(scope="module")
def unit_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("read_ahead")
    model_url = str(root / "em")
    save_tiny_entropy_model(model_url)
    records = make_docs(3, 40)
    records.insert(7, {"id": "long", "text": "river stone cloud " * 60})  # 1080 bytes: parts over several flushes
    url = str(root / "raw" / "docs.jsonl.zst")
    write_object(url, jsonl_bytes(records), compression="zstd")
    torch.set_num_threads(1)
    return WorkUnit(url, Path(url).stat().st_size, "e"), model_url, ShardProcessor(model_url)


def config(out: Path, model_url: str, read_ahead: int) -> PreprocessConfig:
    return PreprocessConfig(inputs="", output=str(out), entropy_model=model_url, span=64, batch_bytes=300,
                            reader=ReaderConfig(max_doc_bytes=LIMIT), read_ahead=read_ahead, use_ray=False)


def test_shards_byte_identical_to_sequential(tmp_path, unit_and_model):
    unit, model_url, processor = unit_and_model
    results, files = {}, {}
    for depth in (0, 1, 2):
        cfg = config(tmp_path / f"ds{depth}", model_url, depth)
        results[depth] = processor.process(unit.to_dict(), cfg)
        shard, patches = results[depth]["shard"], results[depth]["patches"]
        files[depth] = [Path(join(cfg.output, shard["output"])).read_bytes(),
                        Path(join(cfg.output, patches["output"])).read_bytes()]
    # The unit has many record batches and the long document's parts land in different ones.
    docs = document_batches(entropy_stage.read_documents(unit.input_url, ReaderConfig(max_doc_bytes=LIMIT),
                                                         entropy_stage.SkipLog()), 300)
    batches = [[(d.doc_id, d.part) for d in batch] for batch in docs]
    assert len(batches) >= 5
    holding_long = [i for i, b in enumerate(batches) if any(doc_id == "long" for doc_id, _ in b)]
    assert len(holding_long) >= 2, batches
    assert results[0]["shard"]["skips"]["split_documents"] >= 1
    for depth in (1, 2):
        assert files[depth] == files[0]
        for key in ("shard", "patches"):
            strip = {"seconds", "worker"}
            assert ({k: v for k, v in results[depth][key].items() if k not in strip}
                    == {k: v for k, v in results[0][key].items() if k not in strip})
    assert not reader_threads()


def test_reader_permission_error_is_the_same_access_denied_skip(tmp_path, unit_and_model, monkeypatch):
    unit, model_url, processor = unit_and_model
    real = entropy_stage.read_documents
    closed = []

    def denied_midway(*args, **kwargs):
        try:
            for i, doc in enumerate(real(*args, **kwargs)):
                if i == 20:  # after a few flushed batches
                    raise PermissionError("Access Denied: raw/docs.jsonl.zst")
                yield doc
        finally:
            closed.append(threading.current_thread().name)

    monkeypatch.setattr(entropy_stage, "read_documents", denied_midway)
    skips = {}
    for depth in (0, 2):
        result = processor.process(unit.to_dict(), config(tmp_path / f"ds{depth}", model_url, depth))
        skips[depth] = result["shard"]["skips"]
        assert result["shard"]["docs"] == 0
    assert skips[2] == skips[0]
    assert skips[2]["counts"] == {"access_denied": 1}
    assert skips[2]["examples"][0]["detail"] == "PermissionError: Access Denied: raw/docs.jsonl.zst"
    assert closed == ["MainThread", READER]  # the reader's generator was closed in the reader thread
    assert not reader_threads()


def test_scoring_error_stops_and_joins_the_reader(tmp_path, unit_and_model, monkeypatch):
    unit, model_url, processor = unit_and_model
    real_flush = ShardProcessor._flush
    flushed = []

    def failing_flush(self, docs, *args):
        if flushed:
            raise RuntimeError("scoring failed")
        flushed.append(len(docs))
        real_flush(self, docs, *args)

    monkeypatch.setattr(ShardProcessor, "_flush", failing_flush)
    with pytest.raises(RuntimeError, match="scoring failed"):
        processor.process(unit.to_dict(), config(tmp_path / "ds", model_url, 2))
    assert flushed and not reader_threads()


def test_background_iterator_reraises_the_producers_exception():
    original = PermissionError(13, "denied", "s3://b/k")

    def items():
        yield 1
        raise original

    with BackgroundIterator(items(), 2) as it:
        assert next(it) == 1
        with pytest.raises(PermissionError) as caught:
            next(it)
    assert caught.value is original and caught.value.filename == "s3://b/k"
    assert not it.alive


def test_background_iterator_is_bounded_and_closes_early():
    produced, finalized = [], threading.Event()

    def items():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            finalized.set()

    with BackgroundIterator(items(), 2) as it:
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        time.sleep(0.2)  # the producer fills the queue and blocks
        assert len(produced) <= 3 + 2 + 1  # consumed + queued + the one being put
    assert finalized.is_set() and not it.alive  # closed while blocked in a put: joined, generator closed
    assert list(BackgroundIterator(range(5), 1)) == [0, 1, 2, 3, 4]


def test_read_ahead_must_not_be_negative():
    with pytest.raises(ValueError, match="read_ahead"):
        PreprocessConfig(inputs="", output="", entropy_model="", read_ahead=-1)
