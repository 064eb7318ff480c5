"""Chunked, append-only metrics: local appends, one object per chunk on S3, replayed steps replace stale ones."""

from __future__ import annotations

import fsspec
import pytest

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


def _tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar as TensorBoard itself reads the directory (its EventAccumulator, all event files in order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _records(steps: range, loss: float) -> list[dict]:
    return [{"step": s, "loss": loss + s, "lr": 1e-3 * s, "bytes_per_s": 100.0 * s, "val_bits_per_byte/web": 2.0 + s,
             "mix_share/web": 0.5, "global_batch": 4} for s in steps]


def _write(output: str, records: list[dict], flush_every: int = 3) -> None:
    writer = MetricsWriter(output, flush_every)
    for record in records:
        writer.append(record)
    writer.close()


def _assert_same_scalars(got: dict, records: list[dict]) -> None:
    """Every numeric field but step/time/attempt of every record is a scalar at its step (float32 in the file)."""
    tags = {k for r in records for k in r if k not in ("step", "time", "attempt")}
    assert set(got) == tags
    for tag in tags:
        want = [(r["step"], float(r[tag])) for r in records if tag in r]
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want], rel=1e-6), tag


def test_tensorboard_event_files_hold_every_scalar_locally_and_a_resume_supersedes(tmp_path):
    output = str(tmp_path / "run")
    _write(output, _records(range(1, 8), 1.0))
    _write(output, _records(range(5, 11), 2.0))  # resumed from step 4: TensorBoard drops the old 5..7
    final = read_metrics(output)
    assert [r["attempt"] for r in final] == [0] * 4 + [1] * 6 and all(r["workers"] == 1 for r in final)
    got = _tensorboard_scalars(str(tmp_path / "run" / "tensorboard"))
    _assert_same_scalars(got, final)
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 2  # one appended event file per attempt


def test_tensorboard_on_s3_is_one_new_object_per_chunk(bucket, tmp_path):
    output = f"{bucket}/tbrun"
    _write(output, _records(range(1, 8), 1.0))
    _write(output, _records(range(6, 9), 2.0))
    fs, _ = fsspec.core.url_to_fs(output)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{output}/tensorboard".removeprefix("s3://"), detail=False))
    assert [n.split(".", 4)[-1] for n in names] == ["a0000-s00000001.blt", "a0000-s00000004.blt",
                                                     "a0000-s00000007.blt", "a0001-s00000006.blt"]
    local = tmp_path / "download"
    fs.get(f"{output}/tensorboard/".removeprefix("s3://"), str(local), recursive=True)
    final = read_metrics(output)
    _assert_same_scalars(_tensorboard_scalars(str(local)), final)


def test_without_tensorboard_the_metrics_are_still_written(tmp_path, monkeypatch):
    import sys

    from training import tensorboard_log

    messages: list[str] = []
    monkeypatch.setattr(tensorboard_log.log, "info", lambda msg, *args: messages.append(msg % args))

    for name in ("tensorboard", "tensorboard.compat.proto", "tensorboard.summary.writer.event_file_writer"):
        monkeypatch.setitem(sys.modules, name, None)  # the import fails as if not installed
    output = str(tmp_path / "run")
    _write(output, _records(range(1, 4), 1.0))
    assert [r["step"] for r in read_metrics(output)] == [1, 2, 3]
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert len(messages) == 1 and "tensorboard is not installed" in messages[0]
