"""One way to log and show progress for every job: ``logging`` with a ``[blt.<job>]`` prefix, tqdm bars.

Jobs call ``setup_logging()`` once; modules call ``get_logger(__name__)``. Progress over shards uses
``progress(total, desc)``, a tqdm bar on stderr that shows count, bytes, rate and ETA on a terminal and
degrades to a few plain lines when stderr is not a terminal (Ray job logs, CI).
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

FORMAT = "[%(name)s] %(message)s"


def setup_logging(level: int | str | None = None) -> None:
    """Configure the ``blt`` logger tree once (idempotent); level from ``BLT_LOG_LEVEL`` (default INFO)."""
    root = logging.getLogger("blt")
    if getattr(root, "_blt_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("BLT_LOG_LEVEL", "INFO"))
    root.propagate = False
    root._blt_configured = True  # type: ignore[attr-defined]


def get_logger(name: str) -> logging.Logger:
    """``pipeline.preprocess`` -> logger ``blt.preprocess`` (the prefix users see)."""
    return logging.getLogger("blt." + name.rsplit(".", 1)[-1])


def progress(total: int | None, desc: str, unit: str = "shard") -> tqdm:
    """A driver-side progress bar; ``bar.set_postfix_str`` carries bytes and MB/s."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=f"[blt.{desc}]", unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, disable=os.environ.get("BLT_PROGRESS") == "0")
