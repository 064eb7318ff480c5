"""What every checkpoint layout module shares: where files live (a store), what a layout reads and writes.

A layout module never knows whether its files are on local disk or at an fsspec URL: it reads and writes names
inside a ``CheckpointStore``. ``LocalStore`` serves plain directories; ``pipeline.dataset.model_store`` serves URLs
(ranged GETs, atomic object writes) without this package importing the pipeline.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..config import BltConfig, EntropyModelConfig
from ..entropy_model import EntropyModel


class CheckpointLayoutError(ValueError):
    """The location holds no checkpoint in a layout we accept (the message names them and what was found)."""


class CheckpointStore(Protocol):
    """A directory of named files (local or remote)."""

    location: str

    def exists(self, name: str) -> bool: ...
    def read(self, name: str) -> bytes: ...
    def read_ranges(self, name: str, starts: list[int], ends: list[int]) -> list[bytes | Exception]: ...
    def write(self, name: str, data: bytes) -> None: ...
    def child(self, name: str) -> CheckpointStore: ...
    def names(self) -> list[str] | None: ...  # None: no such directory


def read_json(store: CheckpointStore, name: str) -> dict | None:
    return json.loads(store.read(name)) if store.exists(name) else None


def write_json(store: CheckpointStore, name: str, data: dict, sort_keys: bool = True) -> None:
    store.write(name, json.dumps(data, indent=2, sort_keys=sort_keys).encode())


class LocalStore:
    """A local directory; writes go to a temp file renamed into place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.location = str(self.path)

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def read_ranges(self, name: str, starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        with open(self.path / name, "rb") as handle:
            out = []
            for start, end in zip(starts, ends):
                handle.seek(start)
                out.append(handle.read(end - start))
            return out

    def write(self, name: str, data: bytes) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def child(self, name: str) -> LocalStore:
        return LocalStore(self.path / name)

    def names(self) -> list[str] | None:
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else None


@dataclass
class EntropyCheckpoint:
    """An entropy model read from any layout: its config and weights under our parameter names."""

    layout: str
    config: EntropyModelConfig
    state: dict[str, torch.Tensor]

    def build(self, attn_implementation: str = "sdpa") -> EntropyModel:
        model = EntropyModel(self.config, attn_implementation)
        model.load_state_dict(self.state, strict=True)
        return model


@dataclass
class BltCheckpoint:
    """A whole BLT read from any layout, in the exchange form every layout converts through: our config and
    HF ``BltForCausalLM`` tensor names (the patcher, when present, under ``model.patcher.``).

    ``extra_config``: config fields a layout writes last, over what it derives from ``config`` (a training run's
    patching rule: HF's ``patch_in_forward``/``patching_threshold``/... and our full record), so an export states
    the rule the model was trained with instead of the defaults."""

    config: BltConfig
    hf_state: dict[str, torch.Tensor]
    extra_config: dict = field(default_factory=dict)

    @property
    def has_patcher(self) -> bool:
        return any(k.startswith("model.patcher.") for k in self.hf_state)


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint layout: how to recognise it and read/write entropy models and BLTs in it.

    A layout that cannot hold one kind leaves its functions ``None`` (the registry then skips it for that kind).
    """

    name: str
    is_entropy: Callable[[CheckpointStore], bool] | None = None
    read_entropy: Callable[[CheckpointStore], EntropyCheckpoint] | None = None
    is_blt: Callable[[CheckpointStore], bool] | None = None
    read_blt: Callable[[CheckpointStore], BltCheckpoint] | None = None
    write_blt: Callable[[CheckpointStore, BltCheckpoint], None] | None = None

