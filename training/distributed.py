"""Process-group helpers that also work in a single process (no ``torch.distributed`` initialised)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if initialized() else (0, 1)


def device(use_gpu: bool) -> torch.device:
    """The device Ray Train assigned to this worker, or cuda/cpu outside Ray Train."""
    try:
        import ray.train
        import ray.train.torch as ray_torch

        if ray.train.get_context() is not None and (initialized() or use_gpu):
            return ray_torch.get_device()
    except (ImportError, RuntimeError, AttributeError):
        pass
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def mean(values: list[float], dev: torch.device) -> list[float]:
    """Element-wise mean over ranks, one all-reduce for the whole list."""
    if not initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def barrier() -> None:
    if initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (JSON-like data), in rank order."""
    if not initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
