"""Named model sizes. ``blt-1b`` is HF's BltConfig default (the released 1B checkpoint's shape); ``blt-7b`` is the
7B shape as HF's ``convert_blt_weights_to_hf.py`` maps bytelatent's config (global 4096 x 32 layers, local
encoder/decoder 1280 wide, feed-forward sizes ``256 * ceil(8 * dim / 3 / 256)``)."""

from __future__ import annotations

from .config import BltConfig, EntropyModelConfig

_TINY_ENTROPY = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                     sliding_window=64)


def blt_preset(name: str, **overrides) -> BltConfig:
    if name == "tiny":  # tests and the demo: trains in seconds on a CPU
        base = dict(
            encoder_hash_byte_group_vocab=4099, local_attention_window_len=128, patcher_config=_TINY_ENTROPY,
            encoder_config=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=128),
            decoder_config=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128),
            global_config=dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256),
        )
    elif name == "small":  # ~60M parameters plus hash tables: a real run on one GPU
        base = dict(
            encoder_hash_byte_group_vocab=100003, local_attention_window_len=512,
            encoder_config=dict(hidden_size=512, num_attention_heads=8, num_hidden_layers=1),
            decoder_config=dict(hidden_size=512, num_attention_heads=8, num_hidden_layers=6, intermediate_size=1536),
            global_config=dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=8, intermediate_size=2816),
        )
    elif name == "blt-1b":
        base = {}
    elif name == "blt-7b":
        base = dict(
            encoder_config=dict(hidden_size=1280, num_attention_heads=20, num_hidden_layers=1, intermediate_size=3584),
            decoder_config=dict(hidden_size=1280, num_attention_heads=20, num_hidden_layers=9, intermediate_size=3584),
            global_config=dict(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32, intermediate_size=11008),
        )
    else:
        raise ValueError(f"unknown preset {name!r}: tiny, small, blt-1b, blt-7b")
    base.update(overrides)
    return BltConfig(**base)


def entropy_preset(name: str) -> EntropyModelConfig:
    if name == "tiny":
        return EntropyModelConfig(**_TINY_ENTROPY)
    if name == "paper":  # Pagnoni et al.: 14 layers, dim 512, sliding window 512
        return EntropyModelConfig(hidden_size=512, num_attention_heads=8, num_hidden_layers=14,
                                  intermediate_size=1536, sliding_window=512)
    if name == "hf":
        return EntropyModelConfig()
    raise ValueError(f"unknown entropy preset {name!r}: tiny, paper, hf")
