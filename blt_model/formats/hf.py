"""HF ``transformers`` Blt checkpoints <-> our modules. All name mapping lives here.

A checkpoint directory is what ``BltForCausalLM.save_pretrained`` writes: ``config.json`` plus
``model.safetensors`` (or sharded ``model-*.safetensors`` with ``model.safetensors.index.json``). Reading and
writing need only json + safetensors; ``transformers`` itself is never imported here.

Our layers fuse projections that HF keeps apart: ``qkv_proj`` = [q; k; v], ``gate_up_proj`` = [gate; up],
cross-attention ``kv_proj`` = [k; v] (concatenated along the output dimension). Our ``*.stack.layers`` are HF's
``*.layers``, and the entropy model lives under HF's ``model.patcher``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..blt import ByteLatentTransformer
from ..config import BltConfig, entropy_model_config_from_dict, sub_config_to_hf
from ..entropy_model import EntropyModel
from .base import (
    BltCheckpoint,
    CheckpointFormat,
    CheckpointLayoutError,
    CheckpointStore,
    EntropyCheckpoint,
    LocalStore,
    read_json,
    write_json,
)
from .safetensors_io import read_safetensors_subset

_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
_CROSS_FUSED = {"kv_proj": ("k_proj", "v_proj")}
_STACK = re.compile(r"\.?stack\.layers\.")
PATCHER_PREFIX = "model.patcher."
PATCHING_RECORD_KEY = "blt_patching"  # our full patching rule inside config.json (HF ignores unknown keys)


def _hf_prefix_name(name: str, prefix: str) -> str:
    """Our parameter name -> HF name, ignoring fusion. The BLT's lm_head sits outside HF's ``model.``."""
    name = _STACK.sub(".layers.", name).lstrip(".")
    if name == "lm_head.weight" and prefix == "model.":
        return name
    return f"{prefix}{name}"


def _split_sizes(tensor: torch.Tensor, parts: int, fused_name: str) -> list[int]:
    rows = tensor.shape[0]
    if parts == 3:  # q then equal-sized k and v; q has hidden_size (= in_features) rows in BLT
        q_rows = tensor.shape[1]
        return [q_rows, (rows - q_rows) // 2, (rows - q_rows) // 2]
    return [rows // parts] * parts


def state_dict_to_hf(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Our module's parameters under HF names (fused tensors split)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        hf_name = _hf_prefix_name(name, prefix)
        fused = _fused_parts(hf_name)
        if fused is None:
            out[hf_name] = tensor
            continue
        fused_key, parts = fused
        pieces = tensor.split(_split_sizes(tensor, len(parts), fused_key), dim=0)
        for part, piece in zip(parts, pieces):
            out[hf_name.replace(fused_key, part)] = piece.contiguous()
    return out


def _fused_parts(hf_name: str) -> tuple[str, tuple[str, ...]] | None:
    for fused_key, parts in _FUSED.items():
        if f".{fused_key}." in hf_name:
            return fused_key, parts
    if ".cross_attn_layers." in hf_name:
        for fused_key, parts in _CROSS_FUSED.items():
            if f".{fused_key}." in hf_name:
                return fused_key, parts
    return None


def our_state_from_hf(own_names, hf_state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Our state dict (fused tensors) for the parameter names ``own_names`` from HF-named tensors."""
    new_state = {}
    for name in own_names:
        hf_name = _hf_prefix_name(name, prefix)
        fused = _fused_parts(hf_name)
        if fused is None:
            keys = [hf_name]
        else:
            fused_key, parts = fused
            keys = [hf_name.replace(fused_key, part) for part in parts]
        missing = [k for k in keys if k not in hf_state]
        if missing:
            raise KeyError(f"HF checkpoint lacks {missing[0]} (needed for our {name})")
        new_state[name] = torch.cat([hf_state[k] for k in keys], dim=0) if len(keys) > 1 else hf_state[keys[0]]
    return new_state


def load_hf_weights_into(module: torch.nn.Module, hf_state: dict[str, torch.Tensor], prefix: str) -> None:
    """Fill ``module`` from an HF state dict (fusing as needed); every one of our parameters must be found."""
    module.load_state_dict(our_state_from_hf(module.state_dict().keys(), hf_state, prefix), strict=True)


def entropy_param_names(cfg) -> list[str]:
    """Our entropy model's parameter names for ``cfg``, without allocating its weights (meta device)."""
    with torch.device("meta"):
        return list(EntropyModel(cfg).state_dict().keys())


def read_hf_state(store: CheckpointStore) -> dict[str, torch.Tensor]:
    """Every tensor of the directory (one file or the shards its index names)."""
    if store.exists("model.safetensors"):
        return dict(load_safetensors(store.read("model.safetensors")))
    index = read_json(store, "model.safetensors.index.json")
    if index is None:
        raise FileNotFoundError(f"{store.location}: no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_safetensors(store.read(shard)))
    return state


def hf_config(cfg: BltConfig, with_patcher: bool) -> dict:
    """config.json content: ``patch_in_forward`` exactly when the patcher's weights travel with it."""
    config = cfg.to_hf_dict()
    config["patch_in_forward"] = with_patcher
    if with_patcher:
        config["patcher_config"] = sub_config_to_hf(cfg.patcher_config)
    return config


def _has_weights(store: CheckpointStore) -> bool:
    return store.exists("model.safetensors") or store.exists("model.safetensors.index.json")


def is_hf(store: CheckpointStore) -> bool:
    config = read_json(store, "config.json")
    return config is not None and config.get("model_type") == "blt" and _has_weights(store)


def read_blt(store: CheckpointStore) -> BltCheckpoint:
    config = read_json(store, "config.json")
    extra = {PATCHING_RECORD_KEY: config[PATCHING_RECORD_KEY]} if config.get(PATCHING_RECORD_KEY) else {}
    return BltCheckpoint(BltConfig.from_hf_dict(config), read_hf_state(store), extra)


def write_blt(store: CheckpointStore, checkpoint: BltCheckpoint) -> None:
    """config.json + model.safetensors (weights first: the config marks the directory complete)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint.hf_state.items()}
    store.write("model.safetensors", save_safetensors(tensors, metadata={"format": "pt"}))
    write_json(store, "config.json", {**hf_config(checkpoint.config, checkpoint.has_patcher),
                                      **checkpoint.extra_config})


def read_entropy(store: CheckpointStore) -> EntropyCheckpoint:
    """The patcher of an HF BLT, reading only its tensors' bytes."""
    config = read_json(store, "config.json")
    if not config.get("patcher_config"):
        raise CheckpointLayoutError(
            f"{store.location}: HF Blt checkpoint without a patcher_config (no entropy model in it)")
    cfg = entropy_model_config_from_dict(config["patcher_config"])
    hf_state: dict[str, torch.Tensor] = {}
    if store.exists("model.safetensors"):
        hf_state = read_safetensors_subset(store, "model.safetensors", PATCHER_PREFIX)
    else:
        index = read_json(store, "model.safetensors.index.json")
        shards = sorted({f for name, f in index["weight_map"].items() if name.startswith(PATCHER_PREFIX)})
        for shard in shards:
            hf_state.update(read_safetensors_subset(store, shard, PATCHER_PREFIX))
    if not hf_state:
        raise CheckpointLayoutError(
            f"{store.location}: HF Blt checkpoint has no {PATCHER_PREFIX}* tensors (no entropy model)")
    try:
        state = our_state_from_hf(entropy_param_names(cfg), hf_state, PATCHER_PREFIX)
    except KeyError as exc:
        raise CheckpointLayoutError(f"{store.location}: HF Blt patcher incomplete: {exc.args[0]}") from None
    return EntropyCheckpoint("hf", cfg, state)


FORMAT = CheckpointFormat("hf", is_entropy=is_hf, read_entropy=read_entropy, is_blt=is_hf, read_blt=read_blt,
                          write_blt=write_blt)


def blt_from_checkpoint(checkpoint: BltCheckpoint) -> ByteLatentTransformer:
    """Our BLT from an exchange-form checkpoint (every one of our parameters must be present)."""
    model = ByteLatentTransformer(checkpoint.config)
    load_hf_weights_into(model, checkpoint.hf_state, "model.")
    return model


def patcher_from_checkpoint(checkpoint: BltCheckpoint) -> EntropyModel | None:
    """The entropy model that travels with the BLT (``model.patcher.*``), or None."""
    if not checkpoint.has_patcher:
        return None
    patcher = EntropyModel(checkpoint.config.patcher_config, checkpoint.config.attn_implementation)
    load_hf_weights_into(patcher, checkpoint.hf_state, PATCHER_PREFIX)
    return patcher


def load_hf_checkpoint(
    path: str | Path, attn_implementation: str = "sdpa"
) -> tuple[ByteLatentTransformer, EntropyModel | None, BltConfig]:
    """Load an HF Blt checkpoint directory into (BLT, entropy model or None, config)."""
    checkpoint = read_blt(LocalStore(path))
    checkpoint.config.attn_implementation = attn_implementation
    return blt_from_checkpoint(checkpoint), patcher_from_checkpoint(checkpoint), checkpoint.config


def blt_state_to_hf(model: ByteLatentTransformer, patcher: EntropyModel | None = None) -> dict[str, torch.Tensor]:
    state = state_dict_to_hf(model, "model.")
    if patcher is not None:
        state.update(state_dict_to_hf(patcher, PATCHER_PREFIX))
    return state


def blt_checkpoint(model: ByteLatentTransformer, patcher: EntropyModel | None = None,
                   extra_config: dict | None = None) -> BltCheckpoint:
    """Our modules in the exchange form (the config names the patcher's shape when one is attached)."""
    cfg = model.cfg if patcher is None else dataclasses.replace(model.cfg, patcher_config=patcher.cfg)
    return BltCheckpoint(cfg, blt_state_to_hf(model, patcher), dict(extra_config or {}))


def save_hf_checkpoint(
    model: ByteLatentTransformer, path: str | Path, patcher: EntropyModel | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """Write config.json + model.safetensors that ``BltForCausalLM.from_pretrained`` loads.
    ``config_overrides``: config.json fields set last (the patching rule a run trained with)."""
    path = Path(path)
    write_blt(LocalStore(path), blt_checkpoint(model, patcher, config_overrides))
    return path
