"""Ray start-up and a bounded "map over work items" helper shared by the jobs.

``connect`` joins the cluster named by RAY_ADDRESS (what ``ray job submit`` sets) or starts a local one on
127.0.0.1. ``map_unordered`` runs a function over items on Ray tasks or, with ray disabled, in-process, and
yields results as they finish so the driver can commit each one immediately. Fan-out is bounded: at most
``max_in_flight`` tasks (default: a few per CPU of the cluster) exist at once, refilled as they finish, and
``items`` is consumed lazily, so driver memory stays flat in the number of items. Transient storage errors are
retried (Ray task retries for those exception types, and a few in-process attempts without Ray).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.io.logs import get_logger
from pipeline.io.storage import is_transient

TASKS_PER_CPU = 2
log = get_logger(__name__)


def connect(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Join RAY_ADDRESS's cluster or start a local one; ``quiet`` keeps workers' output in their log files and
    Ray's own logging at WARNING (the demo's one-screen output)."""
    if not os.environ.get("RAY_ADDRESS"):
        # A local cluster stays on loopback: without this Ray swaps 127.0.0.1 for the machine's outward IP.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=not quiet)
    else:
        ray.init(
            num_cpus=num_cpus or max(4, os.cpu_count() or 1),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=not quiet,
            logging_level=logging.WARNING if quiet else logging.INFO,
            configure_logging=quiet,
        )


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def default_in_flight(num_cpus: float) -> int:
    """A few tasks per CPU the cluster has for tasks of this size: enough to keep every core busy."""
    return max(1, int(TASKS_PER_CPU * cluster_cpus() / max(num_cpus, 1e-3)))


def call_with_retries(fn: Callable[..., Any], *args: Any, attempts: int = 4, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), retried with backoff on transient storage errors."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            log.warning("transient error (attempt %d/%d), retrying: %s", attempt + 1, attempts, exc)
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def map_unordered(
    fn: Callable[..., Any], items: Iterable[Any], *, use_ray: bool, num_cpus: float = 1.0, max_retries: int = 3,
    max_in_flight: int | None = None, **kwargs: Any,
) -> Iterator[Any]:
    """fn(item, **kwargs) for every item; results in completion order, at most ``max_in_flight`` tasks at once."""
    if not use_ray:
        for item in items:
            yield call_with_retries(fn, item, attempts=max_retries + 1, **kwargs)
        return
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries,
                        retry_exceptions=[OSError, ConnectionError, TimeoutError])(fn)
    limit = max_in_flight or default_in_flight(num_cpus)
    shared = {k: ray.put(v) for k, v in kwargs.items()}  # large kwargs go to the object store once
    iterator = iter(items)
    pending: list = []
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit:
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                break
            pending.append(remote.remote(item, **shared))
        if not pending:
            return
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
