"""Exact streaming entropies with a sliding-window KV cache: equal to scoring each document alone, each byte
computed once, documents never see each other, state carried across ``EntropyStreamer.feed`` calls."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blt_model import EntropyModel, EntropyModelConfig
from blt_model.entropy_stream import EntropyStreamer, stream_entropies

TOL = 1e-5


def random_model(seed: int) -> EntropyModel:
    """A small random model (GQA or not, several windows); weights scaled up so entropies vary by position."""
    rng = random.Random(seed)
    heads = rng.choice([2, 4])
    cfg = EntropyModelConfig(
        hidden_size=heads * rng.choice([8, 16]), num_attention_heads=heads,
        num_key_value_heads=rng.choice([heads, heads // 2]), num_hidden_layers=rng.choice([1, 2, 3]),
        intermediate_size=rng.choice([32, 48]), sliding_window=rng.choice([2, 4, 8, 16]),
    )
    torch.manual_seed(seed)
    model = EntropyModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.35)
    return model


def packed(lengths: list[int], seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.randint(4, 260, (n,), generator=gen) for n in lengths]
    ids = torch.cat([torch.full((n,), 7 * i + 3) for i, n in enumerate(lengths)])
    return docs, torch.cat(docs), ids


def alone(model: EntropyModel, docs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model.entropies(d[None])[0] for d in docs])


# (doc lengths, span): documents crossing span borders, shorter than a span, many tiny ones, one much longer
# than several windows (and than the receptive field of 3 layers of window 16).
LAYOUTS = [
    ([5, 40, 1, 23, 64], 16),
    ([3, 2, 7], 64),
    ([1] * 30 + [2] * 10, 8),
    ([300], 32),
    ([11, 250, 1, 1, 90], 17),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lengths,span", LAYOUTS)
def test_stream_equals_each_document_alone(seed, lengths, span):
    model = random_model(seed)
    docs, tokens, ids = packed(lengths, seed)
    expected = alone(model, docs)
    got = stream_entropies(model, tokens, ids, span=span)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOL
    # Spans do not change the result.
    assert (stream_entropies(model, tokens, ids, span=5) - got).abs().max().item() < TOL


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 50),
    lengths=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 400), max_size=5),
    step=st.integers(1, 40),
)
def test_streamer_carries_state_across_calls(seed, lengths, cuts, step):
    """Feeding the stream in arbitrary pieces (cutting inside documents) gives the whole-stream result."""
    model = random_model(seed)
    docs, tokens, ids = packed(lengths, seed)
    bounds = sorted({0, tokens.numel(), *[c for c in cuts if c < tokens.numel()]})
    streamer = EntropyStreamer(model, step=step)
    pieces = [streamer.feed(tokens[a:b], ids[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert (torch.cat(pieces) - alone(model, docs)).abs().max().item() < TOL


def test_streamer_starts_a_new_document_when_the_id_changes_and_reset_forgets():
    model = random_model(1)
    docs, tokens, ids = packed([30, 30])
    streamer = EntropyStreamer(model, step=8)
    first = streamer.feed(docs[0], torch.full((30,), 5))
    second = streamer.feed(docs[1], torch.full((30,), 6))  # another id: a fresh document, no shared context
    assert (torch.cat([first, second]) - alone(model, docs)).abs().max().item() < TOL
    streamer.reset()
    again = streamer.feed(docs[1], torch.full((30,), 5))  # same id as the earlier first doc, but state was reset
    assert (again - alone(model, docs[1:])).abs().max().item() < TOL


@pytest.mark.parametrize("lanes", [2, 3, 7])
def test_lanes_batched_side_by_side_stay_exact(lanes):
    """The GPU layout: the stream cut into lanes (some inside long documents, which re-read their context)."""
    model = random_model(2)
    docs, tokens, ids = packed([5, 200, 1, 23, 150, 2, 2, 60])
    got = stream_entropies(model, tokens, ids, span=16, lanes=lanes)
    assert (got - alone(model, docs)).abs().max().item() < TOL


def test_each_byte_is_computed_once():
    """No re-read context: the model embeds exactly N tokens, whatever the span (plus nothing for padding)."""
    model = random_model(3)
    _, tokens, ids = packed([5, 40, 1, 23, 64, 100])
    seen = []
    hook = model.embed_tokens.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].numel()))
    try:
        stream_entropies(model, tokens, ids, span=16)
    finally:
        hook.remove()
    assert sum(seen) == tokens.numel()
    assert len(seen) == -(-tokens.numel() // 16)


def test_documents_never_see_each_other():
    model = random_model(0)
    docs, tokens, ids = packed([20, 20, 20])
    base = stream_entropies(model, tokens, ids, span=8)
    changed = tokens.clone()
    changed[20:40] = torch.randint(4, 260, (20,), generator=torch.Generator().manual_seed(9))
    other = stream_entropies(model, changed, ids, span=8)
    assert (base[:20] - other[:20]).abs().max().item() < 1e-6
    assert (base[40:] - other[40:]).abs().max().item() < 1e-6
    assert (base[20:40] - other[20:40]).abs().max().item() > 1e-3


def test_reread_context_still_available():
    """``context=int`` keeps the old re-read behaviour (exact at the receptive field)."""
    model = random_model(1)
    docs, tokens, ids = packed([5, 40, 1, 23, 64])
    got = stream_entropies(model, tokens, ids, span=16, context=model.receptive_field)
    assert (got - alone(model, docs)).abs().max().item() < TOL


def test_matches_hf_blt_patcher_per_document():
    """The HF reference on the same weights, each document alone (as HF runs it)."""
    pytest.importorskip("transformers")
    from transformers.models.blt.modeling_blt import BltPatcher, BltPatcherConfig

    from blt_model.formats.hf import load_hf_weights_into

    hf_cfg = BltPatcherConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                              sliding_window=8)
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = BltPatcher(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.35)
    cfg = EntropyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                             sliding_window=8)
    ours = EntropyModel(cfg).eval()
    load_hf_weights_into(ours, {f"model.patcher.{k}": v for k, v in hf.state_dict().items()}, "model.patcher.")
    docs, tokens, ids = packed([3, 50, 17, 1, 33])
    with torch.no_grad():
        expected = torch.cat([hf(d[None])[0][0] for d in docs])
    got = stream_entropies(ours, tokens, ids, span=16)
    assert (got - expected).abs().max().item() < TOL
