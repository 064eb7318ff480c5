"""Helpers that build matching HF / our models from one random small config (tests only)."""

from __future__ import annotations

import random

import torch


def random_hf_config(seed: int, cross_attn_k: int = 2, **overrides):
    from transformers import BltConfig as HFBltConfig

    rng = random.Random(seed)
    heads = rng.choice([2, 4])
    enc_hidden = heads * rng.choice([8, 16])
    dec_hidden = enc_hidden
    global_hidden = rng.choice([enc_hidden * cross_attn_k, 48, 64])
    kv_heads = rng.choice([heads, heads // 2])
    window = rng.choice([8, 16, 64])
    kwargs = dict(
        vocab_size=260,
        cross_attn_k=cross_attn_k,
        encoder_hash_byte_group_vocab=rng.choice([97, 1009]),
        encoder_hash_byte_group_size=rng.choice([[3, 4, 5, 6, 7, 8], [2, 3]]),
        encoder_hash_byte_group_nb_functions=rng.choice([1, 2]),
        local_attention_window_len=window,
        patching_threshold=1.5,
        patcher_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, sliding_window=rng.choice([8, 16]),
        ),
        encoder_config=dict(
            hidden_size=enc_hidden, num_hidden_layers=rng.choice([1, 2]), num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=2 * enc_hidden, hidden_size_global=global_hidden,
            cross_attn_all_layers=rng.choice([False, True]), cross_attn_k=cross_attn_k,
        ),
        decoder_config=dict(
            hidden_size=dec_hidden, num_hidden_layers=rng.choice([1, 2]), num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=2 * dec_hidden, hidden_size_global=global_hidden,
            cross_attn_all_layers=rng.choice([False, True]), cross_attn_k=cross_attn_k,
        ),
        global_config=dict(
            hidden_size=global_hidden, num_hidden_layers=rng.choice([1, 2]), num_attention_heads=4,
            intermediate_size=2 * global_hidden,
        ),
    )
    kwargs.update(overrides)
    cfg = HFBltConfig(**kwargs)
    cfg._attn_implementation = "sdpa"
    return cfg


def random_hf_model(cfg, seed: int):
    """HF BltForCausalLM with every weight (norms included) random, so no parameter goes untested."""
    from transformers import BltForCausalLM

    torch.manual_seed(seed)
    model = BltForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * param.shape[-1] ** -0.5)
    return model


def bytelatent_compatible(cfg, multiple_of: int = 16):
    """Set every intermediate size by bytelatent's rule (multiple_of * ceil(int(8d/3) / multiple_of)), so the
    config can be written as bytelatent params; returns cfg."""
    def rule(dim: int) -> int:
        return multiple_of * ((int(8 * dim / 3) + multiple_of - 1) // multiple_of)

    for name in ("patcher_config", "encoder_config", "decoder_config", "global_config"):
        sub = getattr(cfg, name)
        sub.intermediate_size = rule(sub.hidden_size)
    return cfg
