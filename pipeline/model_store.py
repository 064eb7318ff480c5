"""Entropy-model checkpoints at any fsspec URL: ``config.json`` + ``model.safetensors``, content-hashed id.

The id (a hash of config and weights) keys stored entropies: a different model means different entropies.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from blt_model.config import content_hash, entropy_model_config_from_dict, entropy_model_config_to_dict
from blt_model.entropy_model import EntropyModel

from .storage import join, read_bytes, write_bytes_atomic


def _checkpoint_id(model_config: dict, weights: bytes) -> str:
    return content_hash(json.dumps(model_config, sort_keys=True), weights)


def _read_checkpoint(url: str) -> tuple[dict, bytes]:
    try:
        config = json.loads(read_bytes(join(url, "config.json")))
        weights = read_bytes(join(url, "model.safetensors"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no entropy model checkpoint at {url} (need config.json + model.safetensors)") from None
    return config, weights


def save_entropy_model(model: EntropyModel, url: str, extra: dict | None = None) -> str:
    """Write the checkpoint (weights first, config last: the config marks it complete); returns its id."""
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    config = {"entropy_model": entropy_model_config_to_dict(model.cfg), **(extra or {})}
    config["id"] = _checkpoint_id(config["entropy_model"], weights)
    write_bytes_atomic(join(url, "model.safetensors"), weights)
    write_bytes_atomic(join(url, "config.json"), json.dumps(config, indent=2, sort_keys=True).encode())
    return config["id"]


def entropy_model_id(url: str) -> str:
    """The checkpoint's id without building the model (the driver only needs to compare ids)."""
    config, weights = _read_checkpoint(url)
    return _checkpoint_id(config["entropy_model"], weights)


def load_entropy_model(url: str, device: str | torch.device = "cpu", attn_implementation: str = "sdpa"):
    """(model in eval mode, id) from a checkpoint URL."""
    config, weights = _read_checkpoint(url)
    model = EntropyModel(entropy_model_config_from_dict(config["entropy_model"]), attn_implementation)
    model.load_state_dict(load_safetensors(weights))
    return model.to(device).eval(), _checkpoint_id(config["entropy_model"], weights)
