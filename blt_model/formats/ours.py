"""Our own layouts: what ``blt train-entropy`` and ``blt train`` write.

* entropy model: ``config.json`` with an ``entropy_model`` entry + ``model.safetensors`` (our parameter names);
* BLT: a training output directory whose ``hf/`` holds the HF export (read and written as the HF layout).
"""

from __future__ import annotations

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..config import entropy_model_config_from_dict, entropy_model_config_to_dict
from ..entropy_model import EntropyModel
from . import hf
from .base import BltCheckpoint, CheckpointFormat, CheckpointStore, EntropyCheckpoint, read_json, write_json

EXPORT_DIR = "hf"


def is_entropy(store: CheckpointStore) -> bool:
    config = read_json(store, "config.json")
    return config is not None and isinstance(config.get("entropy_model"), dict) and store.exists(
        "model.safetensors")


def read_entropy(store: CheckpointStore) -> EntropyCheckpoint:
    cfg = entropy_model_config_from_dict(read_json(store, "config.json")["entropy_model"])
    return EntropyCheckpoint("ours", cfg, dict(load_safetensors(store.read("model.safetensors"))))


def write_entropy(store: CheckpointStore, model: EntropyModel, extra: dict | None = None) -> dict:
    """Weights first, config last (the config marks the checkpoint complete); returns the config written."""
    state: dict[str, torch.Tensor] = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"entropy_model": entropy_model_config_to_dict(model.cfg), **(extra or {})}
    store.write("model.safetensors", save_safetensors(state))
    write_json(store, "config.json", config)
    return config


def is_blt(store: CheckpointStore) -> bool:
    return hf.is_hf(store.child(EXPORT_DIR))


def read_blt(store: CheckpointStore) -> BltCheckpoint:
    return hf.read_blt(store.child(EXPORT_DIR))


def write_blt(store: CheckpointStore, checkpoint: BltCheckpoint) -> None:
    hf.write_blt(store.child(EXPORT_DIR), checkpoint)


FORMAT = CheckpointFormat("ours", is_entropy=is_entropy, read_entropy=read_entropy, is_blt=is_blt,
                          read_blt=read_blt, write_blt=write_blt)
