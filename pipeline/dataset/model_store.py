"""Entropy models at any fsspec URL, with a content id that ignores the layout.

The layouts themselves (ours, HF Blt, bytelatent: detect, read, write) live in ``blt_model.formats``; this module
only fetches (``UrlStore``: ranged GETs, atomic object writes) and computes the id.

The id keys stored entropies: sha256 of the canonical config (our ``EntropyModelConfig``) and the canonical
weights (our parameter names, dtype, shape, bytes), so the same weights in two layouts have the same id.
"""

from __future__ import annotations

import hashlib
import json

import torch

from blt_model.config import EntropyModelConfig, entropy_model_config_to_dict
from blt_model.entropy_model import EntropyModel
from blt_model.formats import CheckpointLayoutError, EntropyCheckpoint, ours, read_entropy_checkpoint
from pipeline.io.storage import filesystem, join, read_bytes, write_bytes_atomic

__all__ = ["CheckpointLayoutError", "UrlStore", "canonical_id", "entropy_model_id", "load_entropy_model",
           "read_checkpoint", "save_entropy_model"]


class UrlStore:
    """A ``blt_model.formats.CheckpointStore`` at any fsspec URL."""

    def __init__(self, url: str):
        self.location = url.rstrip("/") or url
        self.fs, self.path = filesystem(url)

    def exists(self, name: str) -> bool:
        try:
            return self.fs.isfile(join(self.path, name))
        except (FileNotFoundError, PermissionError):
            return False

    def read(self, name: str) -> bytes:
        return read_bytes(join(self.location, name))

    def read_ranges(self, name: str, starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        path = join(self.path, name)
        return self.fs.cat_ranges([path] * len(starts), starts, ends)

    def write(self, name: str, data: bytes) -> None:
        write_bytes_atomic(join(self.location, name), data)

    def child(self, name: str) -> UrlStore:
        return UrlStore(join(self.location, name))

    def names(self) -> list[str] | None:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None


def canonical_id(config: EntropyModelConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 prefix over the config and every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256(json.dumps(entropy_model_config_to_dict(config), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def read_checkpoint(url: str) -> EntropyCheckpoint:
    """Detect the layout at ``url`` and read the entropy model's config and weights (our names)."""
    return read_entropy_checkpoint(UrlStore(url))


def save_entropy_model(model: EntropyModel, url: str, extra: dict | None = None) -> str:
    """Write our layout, its id in the config; returns the id."""
    model_id = canonical_id(model.cfg, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    ours.write_entropy(UrlStore(url), model, {**(extra or {}), "id": model_id})
    return model_id


def entropy_model_id(url: str) -> str:
    """The checkpoint's id without building the model (for an HF BLT only the patcher's bytes are read)."""
    checkpoint = read_checkpoint(url)
    return canonical_id(checkpoint.config, checkpoint.state)


def load_entropy_model(url: str, device: str | torch.device = "cpu", attn_implementation: str = "sdpa"):
    """(model in eval mode, id) from a checkpoint URL in any accepted layout."""
    checkpoint = read_checkpoint(url)
    model_id = canonical_id(checkpoint.config, checkpoint.state)
    return checkpoint.build(attn_implementation).to(device).eval(), model_id
