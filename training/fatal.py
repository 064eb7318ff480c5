"""Deterministic errors on Ray Train workers fail the run once, with one line, instead of ``max_failures`` times.

Ray Train (2.60, Train v2) retries every worker error up to ``FailureConfig.max_failures`` and has no public way to
exempt an exception class (its ``DefaultFailurePolicy`` retries any ``WorkerGroupError``). So the decision is made
here, on the workers, with a marker on the run's storage:

* ``GuardedLoop(loop, marker)`` wraps the loop Ray Train runs. An error that no restart can fix (``is_deterministic``:
  a ``DeterministicError`` at any time; a ``ValueError``/``TypeError``/``KeyError`` or a missing file while the run
  is still being set up, i.e. before ``end_setup()``: config checks, opening inputs, building the model, restoring
  a checkpoint) makes the rank that hit it write ``marker`` (``<output>/ray/fatal-<launch id>.json``: the one-line
  message) and re-raise.
* Ray Train restarts the worker group once; every rank of the new attempt finds the marker before doing anything
  and returns at once, so the run ends.
* ``raise_if_failed(marker)`` in the driver (after ``fit()`` returns or raises) raises ``DeterministicError`` with
  that line; the job CLI prints it as its one error line.

Errors once training steps run (a killed worker, OOM, a storage hiccup) keep Ray Train's normal retries. Each
launch has its own marker, so a new launch is never blocked by an old one.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pipeline.io.logs import get_logger
from pipeline.io.storage import exists, is_transient, join, read_bytes, write_bytes_atomic

log = get_logger(__name__)

# Errors that, raised while a run is set up, are a property of the flags, inputs or checkpoint: a restart repeats them.
SETUP_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError)


class DeterministicError(Exception):
    """No restart can fix this error (bad flags, inputs with nothing to train on, a checkpoint of another model)."""


class _Phase:
    """Whether this worker is still setting its run up (one training function per worker process)."""

    setting_up = False


_PHASE = _Phase()


def end_setup() -> None:
    """Called by the loop right before its first training step: later errors keep Ray Train's retries."""
    _PHASE.setting_up = False


def is_deterministic(exc: BaseException, setting_up: bool) -> bool:
    if isinstance(exc, DeterministicError):
        return True
    if not setting_up or not isinstance(exc, SETUP_ERRORS):
        return False
    return not (isinstance(exc, OSError) and is_transient(exc))


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the first non-empty line of the message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def marker_url(output: str, launch_id: str) -> str:
    return join(output, "ray", f"fatal-{launch_id}.json")


def read_marker(marker: str) -> str | None:
    """The failed launch's one-line message, or None."""
    return json.loads(read_bytes(marker))["message"] if exists(marker) else None


class GuardedLoop:
    """``loop`` for Ray Train: returns at once if this launch already failed deterministically; records such a
    failure in ``marker`` (first writer wins) before re-raising it. A class, not a closure: Ray pickles it by
    reference, so the worker's ``end_setup()`` and this wrapper share the module's phase."""

    def __init__(self, loop: Callable[[dict], None], marker: str) -> None:
        self.loop, self.marker = loop, marker

    def __call__(self, config: dict) -> None:
        failed = read_marker(self.marker)
        if failed is not None:
            log.warning("not retried (a deterministic error ended this launch): %s", failed)
            return
        _PHASE.setting_up = True
        try:
            self.loop(config)
        except BaseException as exc:
            if is_deterministic(exc, _PHASE.setting_up) and not exists(self.marker):
                self._record(exc)
            raise
        finally:
            _PHASE.setting_up = False

    def _record(self, exc: BaseException) -> None:
        from . import distributed

        rank, world = distributed.rank_world()
        phase = "during set-up" if _PHASE.setting_up else "during training"
        message = f"{one_line(exc)} (rank {rank} of {world}, {phase}; not retried)"
        write_bytes_atomic(self.marker, json.dumps({"message": message, "rank": rank}).encode())


def raise_if_failed(marker: str) -> None:
    message = read_marker(marker)
    if message is not None:
        raise DeterministicError(message)
