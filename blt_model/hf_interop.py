"""HF ``transformers`` Blt checkpoints <-> our modules. All name mapping lives here.

A checkpoint directory is what ``BltForCausalLM.save_pretrained`` writes: ``config.json`` plus
``model.safetensors`` (or sharded ``model-*.safetensors`` with ``model.safetensors.index.json``). Reading and
writing need only json + safetensors; ``transformers`` itself is never imported here.

Our layers fuse projections that HF keeps apart: ``qkv_proj`` = [q; k; v], ``gate_up_proj`` = [gate; up],
cross-attention ``kv_proj`` = [k; v] (concatenated along the output dimension). Our ``*.stack.layers`` are HF's
``*.layers``, and the entropy model lives under HF's ``model.patcher``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .blt import ByteLatentTransformer
from .config import BltConfig, sub_config_to_hf
from .entropy_model import EntropyModel

_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
_CROSS_FUSED = {"kv_proj": ("k_proj", "v_proj")}
_STACK = re.compile(r"\.?stack\.layers\.")


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


def read_hf_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    single = path / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    raise FileNotFoundError(f"no model.safetensors (or index) in {path}")


def load_hf_checkpoint(
    path: str | Path, attn_implementation: str = "sdpa"
) -> tuple[ByteLatentTransformer, EntropyModel | None, BltConfig]:
    """Load an HF Blt checkpoint directory into (BLT, entropy model or None, config)."""
    path = Path(path)
    cfg = BltConfig.from_hf_dict(json.loads((path / "config.json").read_text()), attn_implementation=attn_implementation)
    state = read_hf_state(path)
    model = ByteLatentTransformer(cfg)
    load_hf_weights_into(model, state, "model.")
    patcher = None
    if any(k.startswith("model.patcher.") for k in state):
        patcher = EntropyModel(cfg.patcher_config, attn_implementation)
        load_hf_weights_into(patcher, state, "model.patcher.")
    return model, patcher, cfg


def blt_state_to_hf(model: ByteLatentTransformer, patcher: EntropyModel | None = None) -> dict[str, torch.Tensor]:
    state = state_dict_to_hf(model, "model.")
    if patcher is not None:
        state.update(state_dict_to_hf(patcher, "model.patcher."))
    return state


def save_hf_checkpoint(
    model: ByteLatentTransformer, path: str | Path, patcher: EntropyModel | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """Write config.json + model.safetensors that ``BltForCausalLM.from_pretrained`` loads.
    ``config_overrides``: config.json fields set last (the patching rule a run trained with)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.cfg.to_hf_dict()
    config["patch_in_forward"] = patcher is not None
    if patcher is not None:
        config["patcher_config"] = sub_config_to_hf(patcher.cfg)
    config.update(config_overrides or {})
    state = {k: v.detach().cpu().contiguous() for k, v in blt_state_to_hf(model, patcher).items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return path
