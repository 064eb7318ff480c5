"""Start a training loop on Ray Train workers (or in this process), restarting it automatically on failures.

Ray Train runs ``loop(config)`` on ``num_workers`` workers (gloo on CPU, NCCL on GPU). A dead worker (or node)
fails the attempt; with ``FailureConfig(max_failures)`` Ray Train starts a new worker group that runs the loop
again, and the loop resumes from the output's committed checkpoint. A deterministic error (``training.fatal``)
ends the launch after one restart, with its one-line message. Ray Train's run state lives under
``<output>/ray`` (on the output's filesystem, local or object storage), not in a temp dir of the driver.

Logs: Ray Train's own INFO chatter ("Reporting training result ...") is cut to warnings through its
``LoggingConfig``; ``print`` redirection into Ray's logger is off (``RAY_TRAIN_ENABLE_PRINT_PATCH=0``), and the
loops log through the ``blt`` logger (``pipeline.io.logs``), which does not propagate into Ray's root handler, so each
worker line reaches the driver once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable

from pipeline.io.logs import get_logger
from pipeline.io.storage import filesystem, is_local, join

from .fatal import DeterministicError, GuardedLoop, marker_url, raise_if_failed

log = get_logger(__name__)

QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def ray_storage(output: str):
    """(storage_path, storage_filesystem) for Ray Train's run state under ``<output>/ray``."""
    fs, path = filesystem(join(output, "ray"))
    if is_local(fs):
        os.makedirs(path, exist_ok=True)
        return path, None
    import pyarrow.fs as pafs

    fs.makedirs(path, exist_ok=True)
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def launch(loop: Callable[[dict], None], config: dict, *, name: str, output: str, num_workers: int, use_gpu: bool,
           cpus_per_worker: float, max_failures: int, use_ray: bool = True) -> None:
    if not use_ray:
        loop(config)
        return
    os.environ.update(QUIET_ENV)  # propagated by Ray Train to its controller and workers
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, storage_fs = ray_storage(output)
    launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    fatal = marker_url(output, launch_id)  # a deterministic worker error ends this launch after one restart
    trainer = TorchTrainer(
        GuardedLoop(loop, fatal),
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            name=f"{name}-{launch_id}", storage_path=storage_path,
            storage_filesystem=storage_fs, failure_config=FailureConfig(max_failures=max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": dict(QUIET_ENV)},
        ),
    )
    log.info("%s: %d workers (%s), up to %d automatic restarts, run state in %s", name, num_workers,
             "GPU" if use_gpu else "CPU", max_failures, join(output, "ray"))
    try:
        trainer.fit()
    except Exception as exc:
        try:
            raise_if_failed(fatal)  # e.g. max_failures=0: Ray Train gave up on the first attempt
        except DeterministicError as failed:
            raise failed from None  # its one line, not Ray's worker traceback
        raise exc
    raise_if_failed(fatal)


def quiet_ray_worker() -> None:
    """Ray Train logs every report at INFO under a logger named after its source file (outside ``ray.train``, so
    ``LoggingConfig`` misses it): set that logger to WARNING in this worker."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def report(record: dict) -> None:
    """Hand a metrics record to Ray Train (no-op outside it)."""
    try:
        import ray.train

        if ray.train.get_context() is not None:
            ray.train.report(record)
    except (ImportError, RuntimeError, AttributeError):
        pass


def maybe_kill(step: int, kill_at_step: int | None, output: str, rank: int, world: int) -> None:
    """Recovery drill: the last rank SIGKILLs its own process once (a marker under the output makes it once)."""
    if kill_at_step is None or step != kill_at_step or rank != world - 1:
        return
    from pipeline.io.storage import exists, write_bytes_atomic

    marker = join(output, "faults", f"killed-step-{step}")
    if exists(marker):
        return
    write_bytes_atomic(marker, b"")
    log.warning("recovery drill: rank %d kills itself at step %d", rank, step)
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
