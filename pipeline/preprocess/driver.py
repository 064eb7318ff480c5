"""Entropy preprocessing: raw inputs -> Arrow shards with bytes, float16 entropies and patch sets.

This module is the driver: it lists inputs (one paged listing), plans work units (``work_units.plan_units``),
fans them out to ``entropy_stage.ShardProcessor`` actors (one per worker, model loaded once) with a bounded
number in flight, and commits each finished unit as its own small record (``Manifest.commit_unit``, O(1)),
compacting ``manifest.json`` now and then. A re-run skips what is committed and redoes only what is missing; a
different entropy model invalidates everything. Concurrent jobs on one dataset merge instead of overwriting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict

from pipeline.dataset.layout import input_url_of
from pipeline.dataset.manifest import Manifest, ShardRecord
from pipeline.dataset.model_store import entropy_model_id
from pipeline.ingest.work_units import WorkUnit, plan_units
from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger, progress
from pipeline.io.storage import StorageError, credential_source, is_transient, list_inputs
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.entropy_stage import ACCESS_DENIED, ShardProcessor, StrictModeError
from pipeline.preprocess.patch_sets import CommitPolicy, complete_patch_sets

log = get_logger("preprocess")  # users see [blt.preprocess], not the module name

PER_WORKER_IN_FLIGHT = 2  # one running, one queued on each actor: no idle gap between units
UNIT_ATTEMPTS = 4  # a unit failing with a transient storage error is resubmitted this many times in all
STALL_SECONDS = 30.0  # no unit finished for this long: probe the busy actors for units they lost
ALL_DENIED_STOP = 32  # stop early once the first this-many units read were all denied (and at the end if all were)


def run_preprocess(cfg: PreprocessConfig, policy: CommitPolicy | None = None) -> Manifest:
    """Process every pending work unit; returns the committed manifest."""
    policy = policy or CommitPolicy()
    inputs = list_inputs(cfg.inputs)
    model_id = entropy_model_id(cfg.entropy_model)
    manifest = Manifest.load(cfg.output)
    if manifest.model_id and manifest.model_id != model_id:
        log.warning("entropy model changed (%s -> %s): recomputing every shard", manifest.model_id, model_id)
    key = cfg.patching.key()
    params = cfg.patching.to_dict()
    manifest.commit_dataset(entropy_model={"id": model_id, "url": cfg.entropy_model}, reader=asdict(cfg.reader),
                            default_patch_set=key)
    manifest.commit_patch_set(key, params)

    def done(unit: WorkUnit) -> bool:
        record = manifest.shards.get(unit.key)
        return (record is not None and record.etag == unit.etag and record.size == unit.size
                and not _denied(record.skips))  # a denied unit is tried again (the access may be fixed)

    total_bytes = sum(o.size for o in inputs)
    log.info("%d input objects (%.1f MB), %d units committed before -> %s", len(inputs), total_bytes / 1e6,
             len(manifest.shards), cfg.output)
    stats = {"planned": 0, "skipped": 0}

    bar = progress(len(inputs), "preprocess", unit="input")
    outstanding: dict[str, int] = {}  # input url -> its units in flight (bounded by the fan-out)
    owner: dict[str, str] = {}  # unit key in flight -> input url

    # Units committed for an input under another plan (the object changed, or --unit-bytes did): dropped when
    # the input is re-planned, so no document is counted twice.
    by_input: dict[str, list[str]] = {}
    for unit_key in manifest.shards:
        by_input.setdefault(input_url_of(unit_key), []).append(unit_key)

    def pending_units() -> Iterator[dict]:
        for obj in inputs:
            outstanding[obj.url] = 1  # held open while this object is being planned
            planned = plan_units(obj, cfg.reader, cfg.unit_bytes)
            manifest.commit_drop(sorted(set(by_input.pop(obj.url, [])) - {u.key for u in planned}))
            for unit in planned:
                stats["planned"] += 1
                if done(unit):
                    stats["skipped"] += 1
                    continue
                outstanding[obj.url] += 1
                owner[unit.key] = obj.url
                yield unit.to_dict()
            finish_unit(obj.url)

    def finish_unit(url: str) -> None:
        outstanding[url] -= 1
        if not outstanding[url]:
            del outstanding[url]
            bar.update(1)

    started, nbytes, count, denied = time.perf_counter(), 0, 0, 0
    with bar:
        for result in _run_units(pending_units(), cfg):
            record = ShardRecord(**result["shard"])
            denied += _denied(record.skips)
            if denied == count + 1 == ALL_DENIED_STOP and not stats["skipped"]:
                _stop_all_denied(cfg.inputs, denied, record)
            manifest.commit_unit(record, key, result["patches"], params)
            manifest.maybe_compact(policy.every, policy.seconds)
            count += 1
            nbytes += record.bytes
            url = owner.pop(record.input_url, None)
            if url in outstanding:
                finish_unit(url)
            rate = nbytes / max(time.perf_counter() - started, 1e-9) / 1e6
            bar.set_postfix_str(f"{count} units, {nbytes / 1e6:.1f} MB, {rate:.2f} MB/s", refresh=False)
            last = record
    if count and denied == count and not stats["skipped"]:
        _stop_all_denied(cfg.inputs, denied, last)
    log.info("%d units processed, %d already committed", count, stats["skipped"])
    complete_patch_sets(manifest, cfg.use_ray, policy)
    manifest.compact(wait=policy.final_wait, only_if_pending=True)
    skipped = manifest.totals()["skipped"]
    if cfg.strict and skipped:
        raise StrictModeError(f"--strict: skipped input {skipped}")
    return manifest


def _denied(skips: dict) -> bool:
    return bool(skips.get("counts", {}).get(ACCESS_DENIED))


def _stop_all_denied(location: str, denied: int, record: ShardRecord) -> None:
    """Every object read so far was denied: the credentials are wrong, not one object. One line, no secret."""
    example = record.skips["examples"][0]["detail"] if record.skips.get("examples") else ""
    raise StorageError(f"access denied to every object read under {location} ({denied} of {denied}; credentials: "
                       f"{credential_source(location)}): {example}")


def _run_units(units: Iterable[dict], cfg: PreprocessConfig) -> Iterator[dict]:
    if not cfg.use_ray:
        processor = None
        for unit in units:
            if processor is None:
                processor = ShardProcessor(cfg.entropy_model)
            yield ray_runtime.call_with_retries(processor.process, unit, cfg, attempts=UNIT_ATTEMPTS)
        return
    yield from _run_on_actors(units, cfg)


def _actors_that_lost_units(inflight: dict) -> list:
    """Actors whose ping, submitted after their pending units, came back while those units did not: calls run in
    order on an actor, so its units were lost (a restart can drop them). A busy actor never answers in time."""
    import ray

    actors = list({actor for _, actor, _ in inflight.values()})
    pings = {actor.ping.remote(): actor for actor in actors}
    answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=5.0)
    lost = []
    for ref in answered:
        actor = pings[ref]
        pending = [r for r, (_, a, _) in inflight.items() if a is actor]
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if len(done) < len(pending):
            lost.append(actor)
    return lost


def _run_on_actors(units: Iterable[dict], cfg: PreprocessConfig) -> Iterator[dict]:
    """Bounded fan-out over ShardProcessor actors: at most PER_WORKER_IN_FLIGHT units per actor in flight.

    Actors are started lazily (never more than there is work for); a unit failing with a transient error is
    resubmitted; an actor that died for good is replaced."""
    import ray
    from ray.exceptions import RayActorError

    actor_cls = ray.remote(ShardProcessor).options(
        num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker, max_restarts=3, max_task_retries=3
    )
    threads = max(1, int(cfg.cpus_per_worker))
    actors: list = []
    load: dict = {}  # actor -> units in flight on it
    inflight: dict = {}  # ref -> (unit, actor, attempt)
    retry: deque = deque()
    iterator = iter(units)
    exhausted = False
    replacements = 0

    def next_unit():
        nonlocal exhausted
        if retry:
            return retry.popleft()
        if exhausted:
            return None
        try:
            return next(iterator), 1
        except StopIteration:
            exhausted = True
            return None

    def pick_actor():
        """The least busy actor, or a new one while every actor is busy and more may be started."""
        idle = min(actors, key=lambda a: load[a], default=None)
        if (idle is None or load[idle] > 0) and len(actors) < cfg.num_workers:
            return "new"
        return idle if idle is not None and load[idle] < PER_WORKER_IN_FLIGHT else None

    try:
        while True:
            while (actor := pick_actor()) is not None:
                job = next_unit()
                if job is None:
                    break
                if actor == "new":  # started only once there is a unit for it
                    actor = actor_cls.remote(cfg.entropy_model, threads)
                    actors.append(actor)
                    load[actor] = 0
                unit, attempt = job
                inflight[actor.process.remote(unit, cfg)] = (unit, actor, attempt)
                load[actor] += 1
            if not inflight:
                return
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=STALL_SECONDS)
            if not ready:
                for actor in _actors_that_lost_units(inflight):
                    log.warning("a restarted worker lost its units; replacing it and resubmitting them")
                    ray.kill(actor)
                    actors.remove(actor)
                    del load[actor]
                    for ref in [r for r, (_, a, _) in inflight.items() if a is actor]:
                        unit, _, attempt = inflight.pop(ref)
                        retry.append((unit, attempt + 1))
                continue
            unit, actor, attempt = inflight.pop(ready[0])
            if actor in load:
                load[actor] -= 1
            try:
                result = ray.get(ready[0])
            except RayActorError as exc:
                if actor in actors and replacements < 2 * max(cfg.num_workers, 1):
                    log.warning("worker died for good (%s); starting a new one", exc)
                    actors.remove(actor)
                    del load[actor]
                    replacements += 1
                if attempt >= UNIT_ATTEMPTS:
                    raise
                retry.append((unit, attempt + 1))
                continue
            except Exception as exc:
                if attempt >= UNIT_ATTEMPTS or not is_transient(exc):
                    raise
                log.warning("unit %s failed with a transient error (attempt %d), resubmitting: %s",
                            WorkUnit.from_dict(unit).key, attempt, exc)
                retry.append((unit, attempt + 1))
                continue
            yield result
    finally:
        for actor in actors:
            ray.kill(actor)


__all__ = ["CommitPolicy", "PreprocessConfig", "ShardProcessor", "StorageError", "StrictModeError", "run_preprocess"]
