"""Work units inside files: each unit's output, concatenated in unit order, equals whole-file processing.

Parquet is cut between row groups, uncompressed jsonl / txt (line mode) into byte ranges that own the lines
starting inside them; compressed streams, txt file mode and binary stay whole. No Ray here (the driver's tests
run units on two nodes).
"""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.dataset.shards import continues_column, iter_batches
from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents
from pipeline.ingest.work_units import WorkUnit, plan_units
from pipeline.io.storage import InputObject, join, list_inputs
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.entropy_stage import ShardProcessor


def read_unit(unit: WorkUnit, cfg: ReaderConfig) -> tuple[list[tuple], SkipLog]:
    log = SkipLog()
    docs = [(d.doc_id, d.data, d.offset, d.part) for d in
            read_documents(unit.input_url, cfg, log, unit.kind, unit.start, unit.stop)]
    return docs, log


def assert_units_equal_whole(obj: InputObject, cfg: ReaderConfig, unit_bytes: int) -> list[WorkUnit]:
    units = plan_units(obj, cfg, unit_bytes)
    whole, whole_log = read_unit(WorkUnit(obj.url, obj.size, obj.etag), cfg)
    joined, counts, lost, kept, consumed = [], {}, {}, 0, 0
    for unit in units:
        docs, log = read_unit(unit, cfg)
        assert log.unaccounted_bytes == 0
        joined += docs
        for reason, n in log.counts.items():
            counts[reason] = counts.get(reason, 0) + n
        for reason, n in log.lost_bytes.items():
            lost[reason] = lost.get(reason, 0) + n
        kept += log.kept_bytes
        consumed += log.input_bytes
    assert joined == whole
    assert counts == whole_log.counts and lost == whole_log.lost_bytes
    assert kept == whole_log.kept_bytes and consumed == whole_log.input_bytes
    return units


LINES = st.lists(
    st.one_of(
        st.builds(lambda t, i: {"id": f"r{i}", "text": t}, st.text(max_size=40), st.integers(0, 10**6)),
        st.sampled_from(["", "   ", "{bad json", "[1, 2]", '{"text": 5}', '{"no": "text"}']),
        st.builds(lambda n: {"text": "y" * n}, st.integers(60, 400)),  # longer than a unit
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=LINES, unit_bytes=st.integers(1, 300), crlf=st.booleans(), final_newline=st.booleans())
def test_jsonl_byte_ranges_equal_whole_file(tmp_path, lines, unit_bytes, crlf, final_newline):
    data = jsonl_bytes(lines)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    if not final_newline:
        data = data.rstrip(b"\n")
    url = str(tmp_path / f"x{len(data)}-{unit_bytes}.jsonl")
    write_object(url, data)
    obj = InputObject(url, len(data), "e")
    units = assert_units_equal_whole(obj, ReaderConfig(max_doc_bytes=50, max_line_bytes=350), unit_bytes)
    if len(data) > unit_bytes:
        assert len(units) == -(-len(data) // unit_bytes) and all(u.kind == "bytes" for u in units)
        assert [(u.start, u.stop) for u in units][-1][1] == len(data)
        assert all(a.stop == b.start for a, b in zip(units, units[1:]))
    else:
        assert units == [WorkUnit(url, len(data), "e")]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=40),
       unit_bytes=st.integers(1, 200))
def test_txt_lines_byte_ranges_equal_whole_file(tmp_path, lines, unit_bytes):
    data = b"\n".join(lines)
    url = str(tmp_path / f"t{len(data)}-{unit_bytes}.txt")
    write_object(url, data)
    assert_units_equal_whole(InputObject(url, len(data), "e"), ReaderConfig(txt_mode="line", max_doc_bytes=20),
                             unit_bytes)


def test_whole_objects_stay_whole(tmp_path):
    data = jsonl_bytes(make_docs(1, 50))
    for name, payload in (("a.jsonl.gz", gzip.compress(data)), ("b.txt", data), ("c.bin", data)):
        write_object(str(tmp_path / name), payload)
        obj = InputObject(str(tmp_path / name), len(payload), "e")
        assert plan_units(obj, ReaderConfig(), 16) == [WorkUnit(obj.url, obj.size, "e")]
    obj = InputObject(str(tmp_path / "b.txt"), len(data), "e")
    assert len(plan_units(obj, ReaderConfig(txt_mode="line"), 256)) > 1  # txt line mode splits
    unit = WorkUnit("s3://b/x.jsonl", 10, "e", "bytes", 0, 5)
    assert WorkUnit.from_dict(unit.to_dict()) == unit and unit.key == "s3://b/x.jsonl#b0-5"


def write_parquet(path: str, groups: int, rows: int) -> None:
    docs = make_docs(3, groups * rows)
    texts = [d["text"] for d in docs]
    texts[3] = None  # a null: skipped, counted
    table = pa.table({"text": texts, "id": [d["id"] for d in docs]})
    pq.write_table(table, path, row_group_size=rows)


def test_parquet_row_group_units(tmp_path):
    path = str(tmp_path / "five.parquet")
    write_parquet(path, groups=5, rows=20)
    obj = list_inputs(path)[0]
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    units = assert_units_equal_whole(obj, ReaderConfig(), unit_bytes=1)
    assert [(u.kind, u.start, u.stop) for u in units] == [("row_groups", i, i + 1) for i in range(5)]
    units = assert_units_equal_whole(obj, ReaderConfig(), unit_bytes=obj.size // 3)
    assert 1 < len(units) < 5 and units[0].start == 0 and units[-1].stop == 5
    assert plan_units(obj, ReaderConfig(), obj.size) == [WorkUnit(obj.url, obj.size, obj.etag)]
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + b"\x00" * 5000)
    bad_obj = list_inputs(str(bad))[0]
    assert plan_units(bad_obj, ReaderConfig(), 100) == [WorkUnit(bad_obj.url, bad_obj.size, bad_obj.etag)]


def test_units_on_s3(bucket):
    data = jsonl_bytes(make_docs(5, 120))
    write_object(f"{bucket}/raw/a.jsonl", data)
    write_parquet("/tmp/_wu_s3.parquet", groups=4, rows=10)
    write_object(f"{bucket}/raw/b.parquet", open("/tmp/_wu_s3.parquet", "rb").read())
    for obj in list_inputs(f"{bucket}/raw/"):
        units = assert_units_equal_whole(obj, ReaderConfig(), unit_bytes=max(1, obj.size // 4))
        assert len(units) >= 2


def rows_of(root: str, result: dict) -> list[tuple]:
    ent = [r for b in iter_batches(join(root, result["shard"]["output"]), "entropies")
           for r in zip(b.column("doc_id").to_pylist(), b.column("part").to_pylist(), b.column("bytes").to_pylist(),
                        b.column("entropies").to_pylist())]
    patches = [r for b in iter_batches(join(root, result["patches"]["output"]), "patches")
               for r in zip(b.column("patch_lengths").to_pylist(), continues_column(b).tolist())]
    return [e + p for e, p in zip(ent, patches, strict=True)]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_processed_units_equal_whole_file(tmp_path, kind):
    torch.set_num_threads(1)
    model_url = str(tmp_path / "em")
    save_tiny_entropy_model(model_url)
    if kind == "jsonl":
        records = make_docs(9, 60) + [{"id": "long", "text": "long text " * 80}]
        path = str(tmp_path / "in.jsonl")
        write_object(path, jsonl_bytes(records))
    else:
        path = str(tmp_path / "in.parquet")
        write_parquet(path, groups=5, rows=12)
    obj = list_inputs(path)[0]
    cfg = PreprocessConfig(inputs=path, output=str(tmp_path / "ds"), entropy_model=model_url, span=64,
                           reader=ReaderConfig(max_doc_bytes=300), batch_bytes=700, use_ray=False,
                           unit_bytes=obj.size // 4)
    processor = ShardProcessor(model_url)
    whole = processor.process(WorkUnit(obj.url, obj.size, obj.etag).to_dict(), cfg)
    units = plan_units(obj, cfg.reader, cfg.unit_bytes)
    assert len(units) >= 3
    results = [processor.process(u.to_dict(), cfg) for u in units]
    assert [r["shard"]["input_url"] for r in results] == [u.key for u in units]
    assert len({r["shard"]["output"] for r in results}) == len(units)
    joined = [row for r in results for row in rows_of(cfg.output, r)]
    expected = rows_of(cfg.output, whole)
    assert [r[:3] + r[4:] for r in joined] == [r[:3] + r[4:] for r in expected]  # ids, parts, bytes, patches
    np.testing.assert_allclose(np.concatenate([np.array(r[3], np.float32) for r in joined]),
                               np.concatenate([np.array(r[3], np.float32) for r in expected]), atol=2e-3)
    assert sum(r["shard"]["docs"] for r in results) == whole["shard"]["docs"]
    assert sum(r["shard"]["bytes"] for r in results) == whole["shard"]["bytes"]
    assert sum(r["patches"]["patches"] for r in results) == whole["patches"]["patches"]
