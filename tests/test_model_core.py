"""Entropy model packing/context and a BLT training step on CPU."""

from __future__ import annotations

import torch

from blt_model import BltConfig, ByteLatentTransformer, EntropyModel, EntropyModelConfig, stream_entropies
from blt_model.patching import PatchingParams, patch_lengths

TINY_ENTROPY = EntropyModelConfig(
    hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, sliding_window=8
)


def tiny_blt_config(**overrides) -> BltConfig:
    base = dict(
        encoder_hash_byte_group_vocab=257,
        local_attention_window_len=32,
        patcher_config=TINY_ENTROPY,
        encoder_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64),
        decoder_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64),
        global_config=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128),
    )
    base.update(overrides)
    return BltConfig(**base)


def test_stream_entropies_equal_per_document_scoring():
    torch.manual_seed(0)
    model = EntropyModel(TINY_ENTROPY).eval()
    docs = [torch.randint(4, 260, (n,)) for n in (5, 40, 1, 23, 64)]
    tokens = torch.cat(docs)
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])
    expected = torch.cat([model.entropies(d[None])[0] for d in docs])
    # Spans of 16 bytes; the default context (the receptive field) makes packing exact.
    got = stream_entropies(model, tokens, doc_ids, span=16)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    # A context shorter than the receptive field is an approximation, but never crosses documents.
    approx = stream_entropies(model, tokens, doc_ids, span=16, context=4)
    assert (approx[:5] - expected[:5]).abs().max().item() < 1e-4


def test_training_steps_reduce_loss_on_a_repeated_batch():
    torch.manual_seed(0)
    cfg = tiny_blt_config()
    model = ByteLatentTransformer(cfg)
    data = torch.tensor([list(b"the quick brown fox jumps over the lazy dog. " * 2)]) + 4
    tokens, labels = data[:, :-1], data[:, 1:]
    lengths = patch_lengths(PatchingParams(mode="space"), None, data[:, :-1] - 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(tokens, lengths, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert abs(out.bits_per_byte.item() - out.loss.item() / 0.6931471805599453) < 1e-6
    # Every parameter that feeds the loss gets a gradient (nothing silently detached).
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_blocked_sliding_window_attention_equals_dense_reference():
    from blt_model.attention import AttentionPlan

    gen = torch.Generator().manual_seed(0)
    for length, window, kv_heads in ((300, 64, 4), (257, 100, 2), (129, 16, 1)):
        q = torch.randn(2, 4, length, 16, generator=gen)
        k = torch.randn(2, kv_heads, length, 16, generator=gen)
        v = torch.randn(2, kv_heads, length, 16, generator=gen)
        segments = torch.cumsum(torch.rand(2, length, generator=gen) < 0.01, dim=1)
        for seg in (None, segments):
            blocked = AttentionPlan.build(length, window, q.device, "sdpa", seg)
            reference = AttentionPlan.build(length, window, q.device, "eager", seg)
            assert blocked.kind == "blocked"
            diff = (blocked.attend(q, k, v) - reference.attend(q, k, v)).abs().max().item()
            assert diff < 1e-5, (length, window, seg is not None, diff)
