"""Ray start-up and a small "map over shards" helper shared by the jobs.

``connect`` joins the cluster named by RAY_ADDRESS (what ``ray job submit`` sets) or starts a local one on
127.0.0.1. ``map_unordered`` runs a function over items on Ray tasks or, with ray disabled, in-process, and
yields results as they finish so the driver can commit each one to the manifest immediately.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def connect(num_cpus: int | None = None) -> None:
    if not os.environ.get("RAY_ADDRESS"):
        # A local cluster stays on loopback: without this Ray swaps 127.0.0.1 for the machine's outward IP.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus or max(4, os.cpu_count() or 1),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
        )


def map_unordered(
    fn: Callable[..., Any], items: Iterable[Any], *, use_ray: bool, num_cpus: float = 1.0, max_retries: int = 3,
    **kwargs: Any,
) -> Iterator[Any]:
    """fn(item, **kwargs) for every item; results in completion order."""
    items = list(items)
    if not use_ray:
        for item in items:
            yield fn(item, **kwargs)
        return
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False)(fn)
    pending = [remote.remote(item, **kwargs) for item in items]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
