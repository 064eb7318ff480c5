"""Pure-PyTorch Byte Latent Transformer: entropy model, patching, BLT, HF interop. Never imports Ray."""

from .blt import BltOutput, ByteLatentTransformer
from .config import (
    BltConfig,
    EntropyModelConfig,
    GlobalTransformerConfig,
    LocalDecoderConfig,
    LocalEncoderConfig,
)
from .entropy_model import EntropyModel, entropy_from_logits
from .entropy_stream import EntropyStreamer, stream_entropies
from .patching import PatchingParams, lengths_from_start_mask, patch_lengths, patch_start_mask

__all__ = [
    "BltConfig",
    "BltOutput",
    "ByteLatentTransformer",
    "EntropyModel",
    "EntropyModelConfig",
    "EntropyStreamer",
    "GlobalTransformerConfig",
    "LocalDecoderConfig",
    "LocalEncoderConfig",
    "PatchingParams",
    "entropy_from_logits",
    "lengths_from_start_mask",
    "patch_lengths",
    "patch_start_mask",
    "stream_entropies",
]
