"""TensorBoard event files beside the metrics, for ``tensorboard --logdir <output>``: every numeric field of every
metrics record becomes a scalar under its own name (``loss``, ``lr``, ``val_bits_per_byte/<source>``, ...).

Written by the metrics writer's thread, chunk by chunk, never rewritten. Local output: one event file per attempt
under ``<output>/tensorboard/``, appended and flushed at every chunk. Object storage (no append): every chunk is
written to a local temporary file and uploaded atomically as a new object
``tensorboard/events.out.tfevents.<time>.a<attempt>-s<first step>.blt``; names sort in write order, which is the
order TensorBoard reads them in. Every attempt starts with a ``SessionLog.START`` event at its first step, on
which TensorBoard drops the earlier events from that step on: a resumed run's replayed steps replace the old ones,
as in ``read_metrics``.

``tensorboard`` is an optional dependency (``pip install 'blt-pipeline[tensorboard]'``): without it
``open_tensorboard`` logs one line and returns None, and only the plain metrics are written.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from types import SimpleNamespace

from pipeline.io.logs import get_logger
from pipeline.io.storage import filesystem, join, write_bytes_atomic

log = get_logger(__name__)

DIRECTORY = "tensorboard"
# Bookkeeping fields of a record, not curves: the step is the x axis, the wall time is the event's own.
NOT_SCALARS = frozenset({"step", "time", "attempt"})


def scalars(record: dict) -> dict[str, float]:
    """The record's fields TensorBoard shows: finite numbers (not bools), bookkeeping left out."""
    return {k: float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardLog:
    """Writes chunks of metrics records as scalar events; ``local`` appends one file, otherwise one object per chunk."""

    def __init__(self, output: str, local: bool, attempt: int, tensorboard) -> None:
        self.output, self.local, self.attempt = output, local, attempt
        self._tb = tensorboard
        self._started = False
        self._failed = False
        self._writer = None
        if local:
            _, path = filesystem(join(output, DIRECTORY))
            self._writer = self._open(path)

    def _open(self, directory: str):
        return self._tb.EventFileWriter(directory, max_queue_size=1000, flush_secs=3600)

    def write(self, records: list[dict]) -> None:
        """One chunk; a failure here turns TensorBoard off for this run (one warning) and never stops training."""
        if self._failed:
            return
        try:
            self._write(records)
        except Exception as exc:  # noqa: BLE001 - the metrics themselves are written either way
            self._failed = True
            log.warning("TensorBoard event files stop here (metrics continue): %s: %s", type(exc).__name__, exc)

    def _write(self, records: list[dict]) -> None:
        if self.local:
            self._add(self._writer, records)
            self._writer.flush()
            return
        with tempfile.TemporaryDirectory(prefix="blt-tb-") as tmp:
            writer = self._open(tmp)
            self._add(writer, records)
            writer.close()
            (name,) = [n for n in os.listdir(tmp) if "tfevents" in n]
            with open(os.path.join(tmp, name), "rb") as handle:
                data = handle.read()
        object_name = f"events.out.tfevents.{int(time.time()):010d}.a{self.attempt:04d}-s{records[0]['step']:08d}.blt"
        write_bytes_atomic(join(self.output, DIRECTORY, object_name), data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _add(self, writer, records: list[dict]) -> None:
        event_pb2, summary_pb2 = self._tb.event_pb2, self._tb.summary_pb2
        if not self._started:
            self._started = True
            writer.add_event(event_pb2.Event(wall_time=records[0].get("time", time.time()), step=records[0]["step"],
                                             session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        for record in records:
            values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars(record).items()]
            writer.add_event(event_pb2.Event(wall_time=record.get("time", time.time()), step=record["step"],
                                             summary=summary_pb2.Summary(value=values)))


def open_tensorboard(output: str, local: bool, attempt: int) -> TensorBoardLog | None:
    """A TensorBoard log for this writer, or None (one log line) where the ``tensorboard`` package is missing."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        log.info("tensorboard is not installed: no event files, metrics only (pip install 'blt-pipeline[tensorboard]')")
        return None
    return TensorBoardLog(output, local, attempt,
                          SimpleNamespace(EventFileWriter=EventFileWriter, event_pb2=event_pb2, summary_pb2=summary_pb2))
