"""The driver's probe for units a restarted worker lost: an idle actor whose units never finish is found, a busy
actor (its ping queued behind a running unit) is left alone."""

from __future__ import annotations

import time

import pytest

from pipeline.preprocess.driver import _actors_that_lost_units


@pytest.mark.timeout(120)
def test_idle_actor_with_unfinished_units_is_found_busy_one_is_not(ray_cluster):
    import ray

    @ray.remote(num_cpus=0)
    class Worker:
        def ping(self) -> bool:
            return True

        def process(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    @ray.remote(num_cpus=0)
    class Never:
        def wait(self) -> None:
            time.sleep(600)

    idle, busy, never = Worker.remote(), Worker.remote(), Never.remote()
    ray.get([idle.ping.remote(), busy.ping.remote()])
    lost_ref = never.wait.remote()  # stands in for a unit the restarted `idle` actor no longer knows of
    running = busy.process.remote(60.0)
    finished = idle.process.remote(0.0)
    ray.get(finished)
    try:
        inflight = {lost_ref: ({"unit": "a"}, idle, 1), running: ({"unit": "b"}, busy, 1)}
        assert _actors_that_lost_units(inflight) == [idle]
        assert _actors_that_lost_units({finished: ({"unit": "c"}, idle, 1)}) == []  # its unit came back
    finally:
        for actor in (idle, busy, never):
            ray.kill(actor)
