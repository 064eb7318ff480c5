"""Append-only metrics: records are buffered and written in chunks by a background thread, never rewritten whole.

Local output: lines appended to ``<output>/metrics.jsonl``. Object storage (no append): one new object per chunk,
``<output>/metrics/part-a<attempt>-s<first step>.jsonl``; ``attempt`` counts the runs (restarts) of the same
output. ``read_metrics`` concatenates in write order and keeps the last record of each step, so the steps a
resumed run replays replace what the interrupted run logged after its last checkpoint.

The writer stamps every record with ``time`` (Unix seconds), ``attempt`` and ``workers`` (the world size), which
is how the run dashboard finds restarts and elastic re-deals, and mirrors every chunk into TensorBoard event files
(``training/tensorboard_log.py``) when ``tensorboard`` is installed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time

from pipeline.io.storage import filesystem, is_local, join, write_bytes_atomic

from .distributed import rank_world
from .tensorboard_log import open_tensorboard

_PART = re.compile(r"part-a(\d+)-s(\d+)\.jsonl$")


def _parts(output: str) -> list[tuple[int, int, str]]:
    fs, path = filesystem(join(output, "metrics"))
    if not fs.exists(path):
        return []
    found = []
    for p in fs.ls(path, detail=False):
        match = _PART.search(p)
        if match:
            found.append((int(match[1]), int(match[2]), p))
    return sorted(found)


def read_metrics(output: str) -> list[dict]:
    """Every logged step once (its latest record), in step order."""
    by_step = {record["step"]: record for record in read_metrics_log(output)}
    return [by_step[s] for s in sorted(by_step)]


def read_metrics_log(output: str) -> list[dict]:
    """Every record as written, replayed steps included, in write order."""
    fs, _ = filesystem(output)
    chunks: list[str] = []
    local_fs, local_path = filesystem(join(output, "metrics.jsonl"))
    if local_fs.exists(local_path):
        chunks.append(local_fs.cat_file(local_path).decode())
    chunks.extend(fs.cat_file(p).decode() for _, _, p in _parts(output))
    return [json.loads(line) for chunk in chunks for line in chunk.splitlines() if line.strip()]


def _last_local_attempt(path: str) -> int:
    """The ``attempt`` of the last record in a local metrics.jsonl (-1: none), read from the file's tail."""
    if not os.path.exists(path):
        return -1
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 65536))
        lines = [line for line in handle.read().splitlines() if line.strip()]
    try:
        return int(json.loads(lines[-1]).get("attempt", 0)) if lines else -1
    except (ValueError, AttributeError):
        return 0


class MetricsWriter:
    """Rank 0's writer: ``append`` is cheap (no I/O); every ``flush_every`` records a chunk goes to a writer thread."""

    def __init__(self, output: str, flush_every: int = 10) -> None:
        self.output, self.flush_every = output, max(1, flush_every)
        fs, _ = filesystem(output)
        self.local = is_local(fs)
        if self.local:
            self.attempt = _last_local_attempt(filesystem(join(output, "metrics.jsonl"))[1]) + 1
        else:
            self.attempt = max((a for a, _, _ in _parts(output)), default=-1) + 1
        self.workers = rank_world()[1]
        self._tensorboard = open_tensorboard(output, self.local, self.attempt)
        self._buffer: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="metrics-writer")
        self._thread.start()

    def append(self, record: dict) -> None:
        self._buffer.append({**record, "time": time.time(), "attempt": self.attempt, "workers": self.workers})
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        if self._buffer:
            self._queue.put(self._buffer)
            self._buffer = []
        if wait:
            self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self.flush(wait=True)
        self._queue.put(None)
        self._thread.join()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                self._write(chunk)
            except BaseException as exc:  # surfaced on the next flush
                self._error = exc
            finally:
                self._queue.task_done()

    def _write(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        if self.local:
            _, path = filesystem(join(self.output, "metrics.jsonl"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(data)
        else:
            name = f"part-a{self.attempt:04d}-s{records[0]['step']:08d}.jsonl"
            write_bytes_atomic(join(self.output, "metrics", name), data)
        if self._tensorboard is not None:
            self._tensorboard.write(records)
