"""Numeric parity with HF transformers' Blt (BltForCausalLM, BltPatcher) on random small configs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from hf_reference import random_hf_config, random_hf_model  # noqa: E402
from transformers import BltForCausalLM  # noqa: E402
from transformers.models.blt.modeling_blt import BltPatcher, process_patch_lengths  # noqa: E402

from blt_model.formats.hf import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
from blt_model.patching import PatchingParams, patch_lengths  # noqa: E402

CASES = [(seed, k) for seed in range(3) for k in (1, 2)]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(hf model, our model, our patcher, hf config) per case, built once."""
    cache = {}

    def get(seed: int, k: int):
        if (seed, k) not in cache:
            cfg = random_hf_config(seed, cross_attn_k=k)
            hf = random_hf_model(cfg, seed)
            path = tmp_path_factory.mktemp(f"hf{seed}_{k}")
            hf.save_pretrained(path)
            ours, patcher, _ = load_hf_checkpoint(path)
            cache[(seed, k)] = (hf, ours.eval(), patcher.eval(), cfg)
        return cache[(seed, k)]

    return get


@pytest.mark.parametrize("seed,k", CASES)
def test_entropies_and_patch_lengths_match_hf_patcher(loaded, seed, k):
    hf, _, patcher, cfg = loaded(seed, k)
    gen = torch.Generator().manual_seed(100 + seed)
    for length in (1, 2, 17, 64):
        ids = torch.randint(4, 260, (1, length), generator=gen)
        with torch.no_grad():
            hf_ent, _, _ = hf.model.patcher(ids, patch_size=4, threshold=1.0)
            ours = patcher.entropies(ids)
        assert (hf_ent - ours).abs().max().item() < 1e-4
        for quantile in (0.2, 0.5, 0.9):
            threshold = ours.quantile(quantile).item()
            expected = BltPatcher.patch_lengths_from_entropies(ours, length, patch_size=4, threshold=threshold)
            got = patch_lengths(PatchingParams(threshold=threshold), ours, include_next=True)
            assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("seed,k", CASES)
def test_logits_match_hf(loaded, seed, k):
    hf, ours, patcher, _ = loaded(seed, k)
    gen = torch.Generator().manual_seed(200 + seed)
    ids = torch.randint(4, 260, (3, 80), generator=gen)
    with torch.no_grad():
        ent = patcher.entropies(ids)
        # Patch sets with many lengths, rows with different patch counts (zero padding), trailing zero patches.
        for quantile in (0.3, 0.8):
            params = PatchingParams(threshold=ent.quantile(quantile).item(), max_patch_length=6)
            lengths = patch_lengths(params, ent, include_next=True)
            assert (lengths == 0).any() or quantile == 0.3
            expected = hf(ids, patch_lengths=lengths, use_cache=False).logits
            got = ours(ids, lengths).logits
            assert (expected - got).abs().max().item() < 1e-4


def test_max_patch_length_split_matches_hf():
    gen = torch.Generator().manual_seed(0)
    ent = torch.rand(4, 120, generator=gen) * 3
    for max_len in (1, 3, 8):
        base = patch_lengths(PatchingParams(threshold=2.5), ent[:1])
        split = patch_lengths(PatchingParams(threshold=2.5, max_patch_length=max_len), ent[:1])
        assert split.tolist() == process_patch_lengths(base, max_len).tolist()


def test_export_round_trip_loads_in_transformers(loaded, tmp_path):
    hf, ours, patcher, _ = loaded(1, 2)
    save_hf_checkpoint(ours, tmp_path / "export", patcher)
    reloaded = BltForCausalLM.from_pretrained(tmp_path / "export").eval()
    ids = torch.randint(4, 260, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lengths = patch_lengths(PatchingParams(threshold=patcher.entropies(ids).median().item()), patcher.entropies(ids))
        a = hf(ids, patch_lengths=lengths, use_cache=False).logits
        b = reloaded(ids, patch_lengths=lengths, use_cache=False).logits
        c = ours(ids, lengths).logits
        # The exported model patches in its forward exactly as the original (same patcher weights/config).
        d = reloaded(ids[:1], use_cache=False).logits
        e = hf(ids[:1], use_cache=False).logits
    assert (a - b).abs().max().item() < 1e-5
    assert (b - c).abs().max().item() < 1e-4
    assert (d - e).abs().max().item() < 1e-5
    ours_again, patcher_again, _ = load_hf_checkpoint(tmp_path / "export")
    for (name, p), (_, q) in zip(ours.state_dict().items(), ours_again.state_dict().items()):
        assert torch.equal(p, q), name
    assert patcher_again is not None


def test_eager_attention_matches_sdpa(loaded):
    _, ours, patcher, _ = loaded(0, 2)
    ids = torch.randint(4, 260, (2, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sdpa = patcher.entropies(ids)
        patcher.attn_implementation = "eager"
        eager = patcher.entropies(ids)
        patcher.attn_implementation = "sdpa"
    assert (sdpa - eager).abs().max().item() < 1e-4
