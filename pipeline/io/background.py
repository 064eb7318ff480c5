"""Iterate in a background thread through a bounded queue, so producing items (reading, decompressing, parsing)
overlaps with consuming them (scoring) and a unit costs about max(produce, consume) instead of their sum.

Hand-written on ``threading`` + ``queue`` because what the callers need is exactly what the libraries at hand lack:
torchdata.nodes ``Prefetcher`` has no public close (its thread is stopped by a private ``_shutdown``), and it
re-raises through torch's ``ExceptionWrapper``, which builds a *new* exception with the traceback pasted into its
message (or a ``RuntimeError`` when the type cannot be rebuilt). Here the consumer gets the producer's own exception
object (same type, same message, e.g. the ``PermissionError`` that becomes an ``access_denied`` skip with its text),
and ``close`` always stops and joins the thread, also when the consumer stops early or fails.

Memory is bounded: at most ``depth`` items wait in the queue, plus the one the producer is building.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Failed:
    """The producer raised: the consumer re-raises this very exception."""

    exc: BaseException


_END = object()  # the producer ran out


class BackgroundIterator(Generic[T]):
    """Yields the items of ``source`` produced by a daemon thread at most ``depth`` items ahead of the consumer.

    Use it as a context manager (or call ``close``): leaving stops the producer at its next item, closes the
    source iterator in the producer's thread (so a generator's ``finally`` / ``with`` blocks run there) and joins
    the thread. ``close`` waits for the item the producer is building (one read step of the source) to finish.
    """

    def __init__(self, source: Iterable[T], depth: int = 2, name: str = "background-iterator") -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, source: Iterable[T]) -> None:
        try:
            it = iter(source)
            try:
                for item in it:
                    if self._stop.is_set():
                        return
                    self._queue.put(item)  # blocks while the queue is full; ``close`` drains it to unblock
                    if self._stop.is_set():
                        return
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._queue.put(_Failed(exc))
            return
        self._queue.put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            self._thread.join()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the producer and join its thread; idempotent."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            self._drain()  # frees a put the producer is blocked in; it then sees the stop flag
            self._thread.join(timeout=0.01)
        self._drain()  # drop what it left, so nothing it produced stays referenced

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    @property
    def alive(self) -> bool:
        """Whether the producer thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> BackgroundIterator[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
