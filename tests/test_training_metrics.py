"""Chunked, append-only metrics: local appends, one object per chunk on S3, replayed steps replace stale ones."""

from __future__ import annotations

import fsspec

from training.metrics import MetricsWriter, read_metrics


def _run(output: str, steps: range, loss: float, flush_every: int = 3) -> None:
    writer = MetricsWriter(output, flush_every)
    for step in steps:
        writer.append({"step": step, "loss": loss})
    writer.close()


def test_local_metrics_are_appended_and_the_replayed_steps_win(tmp_path):
    output = str(tmp_path / "run")
    _run(output, range(1, 8), 1.0)  # an attempt that got to step 7, then "died"
    size = (tmp_path / "run" / "metrics.jsonl").stat().st_size
    _run(output, range(5, 11), 2.0)  # resumed from a checkpoint at step 4
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > size  # appended, not rewritten
    records = read_metrics(output)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert [r["loss"] for r in records] == [1.0] * 4 + [2.0] * 6


def test_s3_metrics_are_one_new_object_per_chunk(bucket):
    output = f"{bucket}/run"
    _run(output, range(1, 8), 1.0)
    _run(output, range(6, 9), 2.0)
    fs, _ = fsspec.core.url_to_fs(output)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{output}/metrics".removeprefix("s3://"), detail=False))
    assert names == ["part-a0000-s00000001.jsonl", "part-a0000-s00000004.jsonl", "part-a0000-s00000007.jsonl",
                     "part-a0001-s00000006.jsonl"]
    records = read_metrics(output)
    assert [(r["step"], r["loss"]) for r in records] == [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in (6, 7, 8)]


def test_writer_does_no_io_until_a_chunk_is_full(tmp_path):
    writer = MetricsWriter(str(tmp_path / "run"), flush_every=5)
    for step in range(1, 5):
        writer.append({"step": step})
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # buffered: the step loop never waits on storage
    writer.append({"step": 5})
    writer.flush(wait=True)
    assert len(read_metrics(str(tmp_path / "run"))) == 5
    writer.close()
