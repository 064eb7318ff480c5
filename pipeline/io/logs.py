"""One way to log and show progress for every job: ``logging`` with a ``[blt.<job>]`` prefix, tqdm bars.

Jobs call ``setup_logging()`` once; modules call ``get_logger(__name__)``. Progress over shards uses
``progress(total, desc)``, a tqdm bar on stderr that shows count, bytes, rate and ETA on a terminal and
degrades to a few plain lines when stderr is not a terminal (Ray job logs, CI). ``bar.add(items, nbytes)``
advances it and keeps the bytes and MB/s in the bar; ``total_bytes=`` adds "of N MB". ``BLT_PROGRESS=0`` turns
the bars off, ``BLT_PROGRESS_LEAVE=0`` clears each bar when it is done (the demo's one line per stage).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

FORMAT = "[%(name)s] %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted: a notebook or test harness may swap stderr
    after set-up, and a handler holding the old stream would then write to a closed file."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int | str | None = None) -> None:
    """Configure the ``blt`` logger tree once (idempotent); level from ``BLT_LOG_LEVEL`` (default INFO)."""
    root = logging.getLogger("blt")
    if getattr(root, "_blt_configured", False):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("BLT_LOG_LEVEL", "INFO"))
    root.propagate = False
    root._blt_configured = True  # type: ignore[attr-defined]


def get_logger(name: str) -> logging.Logger:
    """``pipeline.preprocess.driver`` -> logger ``blt.preprocess`` (the prefix users see)."""
    return logging.getLogger("blt." + name.rsplit(".", 1)[-1])


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KB' (decimal units, as the MB/s rates)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress(tqdm):
    """A tqdm bar over items (shards) that also tracks bytes: ``add(1, nbytes)``."""

    def __init__(self, *args, total_bytes: int | None = None, **kwargs) -> None:
        self.total_bytes = total_bytes
        self.done_bytes = 0
        self._started = time.perf_counter()
        super().__init__(*args, **kwargs)

    def add(self, items: int = 1, nbytes: int = 0) -> None:
        self.done_bytes += nbytes
        rate = self.done_bytes / max(time.perf_counter() - self._started, 1e-9)
        of = f" of {format_bytes(self.total_bytes)}" if self.total_bytes else ""
        self.set_postfix_str(f"{format_bytes(self.done_bytes)}{of}, {format_bytes(rate)}/s", refresh=False)
        self.update(items)


def progress(total: int | None, desc: str, unit: str = "shard", total_bytes: int | None = None) -> Progress:
    """A driver-side progress bar; ``bar.add(1, nbytes)`` carries bytes and MB/s (``set_postfix_str`` works too)."""
    interactive = sys.stderr.isatty()
    return Progress(total=total, desc=f"[blt.{desc}]", unit=unit, file=sys.stderr, dynamic_ncols=True,
                    mininterval=0.5 if interactive else 30.0, total_bytes=total_bytes,
                    leave=os.environ.get("BLT_PROGRESS_LEAVE") != "0", disable=os.environ.get("BLT_PROGRESS") == "0")
