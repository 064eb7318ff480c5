"""Training checkpoints at any fsspec URL: ``<output>/checkpoints/step-<n>/`` plus a ``latest.json`` pointer.

A checkpoint holds the model, optimizer, LR scheduler and step (written by rank 0) and one loader-state file
per rank (each rank's data position). The pointer is written last, after every rank's files exist, so a job
killed mid-save resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import io
import json

import torch

from .storage import exists, join, read_bytes, write_bytes_atomic


def _save(obj, url: str) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(url, buffer.getvalue())


def _load(url: str):
    return torch.load(io.BytesIO(read_bytes(url)), map_location="cpu", weights_only=False)


def step_dir(output: str, step: int) -> str:
    return join(output, "checkpoints", f"step-{step:08d}")


def save_trainer_state(output: str, step: int, state: dict) -> None:
    _save(state, join(step_dir(output, step), "trainer.pt"))


def save_rank_state(output: str, step: int, rank: int, state: dict) -> None:
    _save(state, join(step_dir(output, step), f"rank-{rank:05d}.pt"))


def commit(output: str, step: int, world_size: int) -> None:
    write_bytes_atomic(join(output, "checkpoints", "latest.json"),
                       json.dumps({"step": step, "world_size": world_size, "path": step_dir(output, step)}).encode())


def latest(output: str) -> dict | None:
    pointer = join(output, "checkpoints", "latest.json")
    return json.loads(read_bytes(pointer)) if exists(pointer) else None


def load_trainer_state(output: str, step: int) -> dict:
    return _load(join(step_dir(output, step), "trainer.pt"))


def load_rank_state(output: str, step: int, rank: int) -> dict:
    return _load(join(step_dir(output, step), f"rank-{rank:05d}.pt"))
