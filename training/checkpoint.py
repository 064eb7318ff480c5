"""Sharded training checkpoints with ``torch.distributed.checkpoint`` (DCP) at any fsspec URL.

Layout under ``<output>/checkpoints/``::

    step-<n>/.metadata, __<rank>_0.distcp   model + optimizer: every rank writes its own shards, in parallel
    step-<n>/train_state.json             step, LR schedule, config (rank 0)
    step-<n>/rank-<r>.json                each rank's data-loader position
    latest.json                           the commit: written last, after every rank's files exist

A job killed mid-save resumes from the previous commit. Loading goes through ``get_state_dict``/``set_state_dict``,
so a checkpoint written by N DDP workers loads into M FSDP2 workers and back (DCP reshards by parameter name).
Tensors are read with ``weights_only`` loads; nothing here unpickles model state (DCP's own ``.metadata`` index is
the only pickle). ``keep`` committed checkpoints are kept; ``async_save`` stages to host memory and writes in the
background while training continues, committing at the next save (or at the end).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pipeline.io.logs import get_logger
from pipeline.io.storage import exists, filesystem, join, read_bytes, write_bytes_atomic

from . import distributed
from .config import CheckpointConfig
from .fatal import DeterministicError
from .optim import OptimizerSet

log = get_logger(__name__)


def root(output: str) -> str:
    return join(output, "checkpoints")


def step_url(output: str, step: int) -> str:
    return join(root(output), f"step-{step:08d}")


def latest(output: str) -> dict | None:
    """The committed pointer ``{"step", "world_size", "path"}``, or None for a fresh run."""
    pointer = join(root(output), "latest.json")
    return json.loads(read_bytes(pointer)) if exists(pointer) else None


def _json(obj) -> bytes:
    def default(value):
        if hasattr(value, "tolist"):  # numpy / torch scalars and arrays in loader states
            return value.tolist()
        raise TypeError(f"not JSON-serialisable in a checkpoint: {type(value).__name__}")

    return json.dumps(obj, default=default).encode()


def _storage(url: str, write: bool):
    if "://" in url and not url.startswith("file://"):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

        return FsspecWriter(url) if write else FsspecReader(url)
    path = url.removeprefix("file://")
    return dcp.FileSystemWriter(path) if write else dcp.FileSystemReader(path)


@dataclass
class Restored:
    step: int
    shared: dict  # train_state.json (what the loop passed as ``shared``)
    rank_states: list[dict]  # every rank's rank-<r>.json of the writing run, in its rank order


class CheckpointMismatchError(DeterministicError, ValueError):
    """The committed checkpoint does not fit this run's model or optimizer (another preset, other shapes)."""


def _mismatch(exc: dcp.CheckpointException, url: str) -> CheckpointMismatchError | None:
    """DCP's load-planning errors (a size mismatch, a missing key) as one line; None for anything else (I/O)."""
    errors = [failure[0] if isinstance(failure, tuple) else failure for failure in exc.failures.values()]
    if not errors or not all(isinstance(e, ValueError) or "Missing key" in str(e) for e in errors):
        return None
    detail = str(errors[0]).strip().splitlines()[0] if str(errors[0]).strip() else type(errors[0]).__name__
    return CheckpointMismatchError(f"the checkpoint at {url} does not fit this run's model: {detail}")


def _kill_before_metadata(writer, output: str, step: int):
    """Recovery drill: the writer SIGKILLs its process in the background write, after the shards and before DCP's
    ``.metadata`` (once: a marker under the output)."""
    marker = join(output, "faults", f"killed-async-save-step-{step}")
    if exists(marker):
        return writer
    write_bytes_atomic(marker, b"")

    def finish(metadata, results):
        log.warning("recovery drill: killed inside the async save of step %d (thread %s)", step,
                    threading.current_thread().name)
        os.kill(os.getpid(), signal.SIGKILL)

    writer.finish = finish
    return writer


class Checkpointer:
    def __init__(self, output: str, cfg: CheckpointConfig, kill_in_async_save: int | None = None) -> None:
        self.output, self.cfg = output, cfg
        self.kill_in_async_save = kill_in_async_save
        self.rank, self.world = distributed.rank_world()
        self._pending: tuple[object, int] | None = None
        self._async_group = None

    # ---- save --------------------------------------------------------------------------------------
    def save(self, step: int, model: torch.nn.Module, optim: OptimizerSet, shared: dict, rank_state: dict) -> None:
        """Write step ``step``; commits now (sync) or at the next ``save``/``wait`` (async)."""
        self.wait()
        url = step_url(self.output, step)
        if self.rank == 0:  # a killed attempt may have left files of this step (other world size): start clean
            fs, path = filesystem(url)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        distributed.barrier()
        write_bytes_atomic(join(url, f"rank-{self.rank:05d}.json"), _json(rank_state))
        if self.rank == 0:
            write_bytes_atomic(join(url, "train_state.json"), _json({**shared, "optim": optim.state_dict(), "step": step}))
        model_state, optim_state = get_state_dict(model, optim.optimizers)
        state = {"model": model_state, "optim": optim_state}
        if self.cfg.async_save and distributed.initialized():
            if self._async_group is None:  # async saves coordinate over gloo, off the training (NCCL) group
                self._async_group = dist.new_group(backend="gloo")
            writer = _storage(url, True)
            if step == self.kill_in_async_save and self.rank == 0:  # rank 0 coordinates: DCP's finish runs there
                writer = _kill_before_metadata(writer, self.output, step)
            future = dcp.async_save(state, storage_writer=writer, process_group=self._async_group)
            self._pending = (future, step)
        else:
            dcp.save(state, storage_writer=_storage(url, True))
            self._commit(step)

    def wait(self) -> None:
        """Finish an async save in flight and commit it."""
        if self._pending is None:
            return
        future, step = self._pending
        self._pending = None
        future.result()
        self._commit(step)

    def _commit(self, step: int) -> None:
        distributed.barrier()  # every rank's shards and rank file exist
        if self.rank == 0:
            write_bytes_atomic(join(root(self.output), "latest.json"), json.dumps(
                {"step": step, "world_size": self.world, "path": step_url(self.output, step)}).encode())
            self._retain(step)
            log.info("checkpoint step %d committed (%s)", step, step_url(self.output, step))
        distributed.barrier()

    def _retain(self, committed: int) -> None:
        if self.cfg.keep <= 0:
            return
        fs, path = filesystem(root(self.output))
        steps = sorted(int(p.rstrip("/").rsplit("step-", 1)[1]) for p in fs.ls(path, detail=False)
                       if p.rstrip("/").rsplit("/", 1)[-1].startswith("step-"))
        kept = [s for s in steps if s <= committed][-self.cfg.keep:]
        for old in steps:
            if old < committed and old not in kept:
                fs.rm(filesystem(step_url(self.output, old))[1], recursive=True)

    # ---- load --------------------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return latest(self.output) is not None

    def load(self, model: torch.nn.Module, optim: OptimizerSet, check=None) -> Restored | None:
        """Load the committed checkpoint into ``model``/``optim`` (whatever their sharding); None if none.
        ``check(shared)`` may refuse it (raise) before any tensor is read."""
        pointer = latest(self.output)
        if pointer is None:
            return None
        step = pointer["step"]
        url = step_url(self.output, step)
        shared = json.loads(read_bytes(join(url, "train_state.json")))
        if check is not None:
            check(shared)
        rank_states = [json.loads(read_bytes(join(url, f"rank-{r:05d}.json"))) for r in range(pointer["world_size"])]
        optim.prepare_load()
        model_state, optim_state = get_state_dict(model, optim.optimizers)
        state = {"model": model_state, "optim": optim_state}
        try:
            dcp.load(state, storage_reader=_storage(url, False))
        except dcp.CheckpointException as exc:
            mismatch = _mismatch(exc, url)
            if mismatch is None:
                raise
            raise mismatch from None
        set_state_dict(model, optim.optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])
        optim.load_state_dict(shared.pop("optim"))
        return Restored(step, shared, rank_states)
