"""The ``blt`` log handler writes to the stderr of the moment: a harness that swaps stderr after set-up (pytest's
capture, a notebook) gets the lines, and a stream closed since then is never written to."""

from __future__ import annotations

import io
import sys

from pipeline.io.logs import get_logger, setup_logging


def test_log_lines_follow_stderr_swapped_after_setup(monkeypatch):
    setup_logging()
    log = get_logger("pipeline.io.test_logs")
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.info("one")
    first.close()  # a capture that has ended
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("two")
    assert second.getvalue() == "[blt.test_logs] two\n"
