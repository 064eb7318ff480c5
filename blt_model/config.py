"""Dataclass configs for the BLT model family.

Field names follow HF ``transformers``' ``BltConfig`` and its sub-configs one to one, so that a checkpoint's
``config.json`` maps onto them without a translation table. The only renamed field is RoPE: HF keeps
``rope_parameters = {"rope_type": "default", "rope_theta": X}``; we keep ``rope_theta = X`` (only the default
RoPE type exists in BLT checkpoints, anything else is refused on load).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from .patching import ENTROPY_THRESHOLD

ATTN_IMPLEMENTATIONS = ("sdpa", "flex", "eager")


@dataclass
class TransformerConfig:
    """Shape of one stack of pre-norm transformer layers (shared by every BLT component)."""

    hidden_size: int = 512
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    num_hidden_layers: int = 2
    intermediate_size: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 4096
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = int(8 * self.hidden_size / 3)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class EntropyModelConfig(TransformerConfig):
    """The small causal byte LM whose next-byte entropies drive patching (HF ``BltPatcherConfig``)."""

    vocab_size: int = 260
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_hidden_layers: int = 14
    intermediate_size: int | None = 2048
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    sliding_window: int | None = 512


@dataclass
class LocalEncoderConfig(TransformerConfig):
    vocab_size: int = 260
    hidden_size: int = 1024
    num_attention_heads: int = 16
    num_hidden_layers: int = 1
    cross_attn_all_layers: bool = False
    cross_attn_k: int = 2
    hidden_size_global: int = 2048
    max_position_embeddings: int = 24576


@dataclass
class LocalDecoderConfig(TransformerConfig):
    vocab_size: int = 260
    hidden_size: int = 1024
    num_attention_heads: int = 16
    num_hidden_layers: int = 9
    intermediate_size: int | None = 2816
    cross_attn_all_layers: bool = True
    cross_attn_k: int = 2
    hidden_size_global: int = 2048
    max_position_embeddings: int = 24576


@dataclass
class GlobalTransformerConfig(TransformerConfig):
    hidden_size: int = 2048
    num_attention_heads: int = 16
    num_hidden_layers: int = 25
    intermediate_size: int | None = 5632


_SUB_CONFIGS = {
    "patcher_config": EntropyModelConfig,
    "encoder_config": LocalEncoderConfig,
    "decoder_config": LocalDecoderConfig,
    "global_config": GlobalTransformerConfig,
}


@dataclass
class BltConfig:
    """The whole Byte Latent Transformer: hash embeddings, local encoder, global model, local decoder, patcher."""

    vocab_size: int = 260
    max_position_embeddings: int = 4096
    patch_in_forward: bool = True
    patch_size: int = 4
    patching_mode: str = "entropy"
    patching_threshold: float = ENTROPY_THRESHOLD
    patching_batch_size: int = 1
    max_patch_length: int | None = None
    local_attention_window_len: int | None = 512
    cross_attn_k: int = 2
    encoder_hash_byte_group_size: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    encoder_hash_byte_group_vocab: int = 500002
    encoder_hash_byte_group_nb_functions: int = 1
    rope_theta: float = 500000.0
    initializer_range: float = 0.02
    patcher_config: EntropyModelConfig = field(default_factory=EntropyModelConfig)
    encoder_config: LocalEncoderConfig = field(default_factory=LocalEncoderConfig)
    decoder_config: LocalDecoderConfig = field(default_factory=LocalDecoderConfig)
    global_config: GlobalTransformerConfig = field(default_factory=GlobalTransformerConfig)
    # Not part of the HF schema: which attention kernel our modules use ("sdpa" everywhere, "flex" on GPU).
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for name, cls in _SUB_CONFIGS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _sub_config_from_dict(cls, value))
        self.encoder_config.cross_attn_k = self.cross_attn_k
        self.decoder_config.cross_attn_k = self.cross_attn_k
        self.decoder_config.hidden_size_global = self.global_config.hidden_size
        self.encoder_config.hidden_size_global = self.global_config.hidden_size
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}")

    @property
    def encoder_cross_output_size(self) -> int | None:
        """Width of the encoder's patch output when it differs from the global width (then a projection exists)."""
        size = self.encoder_config.hidden_size * self.cross_attn_k
        return None if size == self.global_config.hidden_size else size

    # ----- HF config.json interop -------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content ``transformers.BltForCausalLM.from_pretrained`` expects."""
        out: dict[str, Any] = {"model_type": "blt", "architectures": ["BltForCausalLM"]}
        for f in dataclasses.fields(self):
            if f.name == "attn_implementation":
                continue
            value = getattr(self, f.name)
            if f.name in _SUB_CONFIGS:
                out[f.name] = sub_config_to_hf(value)
            elif f.name == "rope_theta":
                out["rope_parameters"] = {"rope_type": "default", "rope_theta": value}
            else:
                out[f.name] = list(value) if isinstance(value, list) else value
        out["encoder_config"]["sliding_window"] = self.local_attention_window_len
        out["tie_word_embeddings"] = False
        return out

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], **overrides: Any) -> BltConfig:
        if data.get("model_type", "blt") != "blt":
            raise ValueError(f"not a BLT config: model_type={data.get('model_type')!r}")
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key == "rope_parameters" and value:
                kwargs["rope_theta"] = _rope_theta(value)
            elif key in _SUB_CONFIGS:
                kwargs[key] = _sub_config_from_dict(_SUB_CONFIGS[key], value or {})
            elif key in names:
                kwargs[key] = value
        kwargs.update(overrides)
        for sub in ("encoder_config", "decoder_config"):
            sub_k = (data.get(sub) or {}).get("cross_attn_k")
            if sub_k is not None and sub_k != kwargs.get("cross_attn_k", sub_k):
                raise ValueError(f"{sub}.cross_attn_k={sub_k} disagrees with cross_attn_k={kwargs['cross_attn_k']}")
        return cls(**kwargs)


def _rope_theta(rope_parameters: dict[str, Any]) -> float:
    rope_type = rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type!r}: BLT checkpoints use the default RoPE")
    return float(rope_parameters["rope_theta"])


def _sub_config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if data.get("rope_parameters"):
        kwargs["rope_theta"] = _rope_theta(data["rope_parameters"])
    return cls(**kwargs)


def sub_config_to_hf(sub: TransformerConfig) -> dict[str, Any]:
    out = {f.name: getattr(sub, f.name) for f in dataclasses.fields(sub) if f.name != "rope_theta"}
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": sub.rope_theta}
    out["hidden_act"] = "silu"  # every BLT component uses SwiGLU
    return out


def entropy_model_config_to_dict(cfg: EntropyModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def entropy_model_config_from_dict(data: dict[str, Any]) -> EntropyModelConfig:
    return _sub_config_from_dict(EntropyModelConfig, data)


def content_hash(*parts: bytes | str) -> str:
    """Short stable id (sha256 prefix) for configs and weights: used to key stored entropies by model."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:16]
