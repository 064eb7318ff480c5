"""Properties of the vectorized patchers (hypothesis) and a few hand-checked cases."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blt_model.patching import PatchingParams, patch_ids_from_lengths, patch_lengths

entropy_rows = st.lists(st.floats(0, 5, allow_nan=False, width=32), min_size=1, max_size=200)
modes = st.sampled_from(["entropy", "monotonic", "threshold_add", "static", "space", "byte"])


def _params(mode: str, threshold: float, max_len: int | None) -> PatchingParams:
    return PatchingParams(mode=mode, threshold=threshold, threshold_add=0.7, patch_size=3, max_patch_length=max_len)


@settings(max_examples=200, deadline=None)
@given(entropy_rows, modes, st.floats(-1, 6), st.one_of(st.none(), st.integers(1, 9)))
def test_lengths_cover_the_sequence(row, mode, threshold, max_len):
    ent = torch.tensor([row])
    byte_values = (ent * 50).long() % 256
    lengths = patch_lengths(_params(mode, threshold, max_len), ent, byte_values if mode == "space" else None)
    values = lengths[0].tolist()
    assert all(v >= 1 for v in values)
    assert sum(values) == len(row)
    assert values[0] == 1  # the first byte is always a patch of its own
    if max_len is not None:
        assert max(values) <= max_len


@settings(max_examples=200, deadline=None)
@given(entropy_rows, st.sampled_from(["entropy", "monotonic", "threshold_add"]), st.floats(-1, 6), st.floats(0, 2),
       st.one_of(st.none(), st.integers(1, 9)))
def test_patch_count_is_monotone_in_threshold(row, mode, threshold, delta, max_len):
    ent = torch.tensor([row])
    low = patch_lengths(_params(mode, threshold, max_len), ent)
    high = patch_lengths(_params(mode, threshold + delta, max_len), ent)
    assert (high > 0).sum() <= (low > 0).sum()


@settings(max_examples=100, deadline=None)
@given(st.lists(entropy_rows, min_size=1, max_size=5), st.floats(0, 5))
def test_batched_rows_equal_single_rows(rows, threshold):
    """Padding a batch changes nothing: each row's lengths equal those computed alone."""
    width = max(len(r) for r in rows)
    ent = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ent[i, : len(r)] = torch.tensor(r)
    seq_lengths = torch.tensor([len(r) for r in rows])
    params = PatchingParams(threshold=threshold)
    batched = patch_lengths(params, ent, seq_lengths=seq_lengths, include_next=True)
    for i, r in enumerate(rows):
        alone = patch_lengths(params, torch.tensor([r]), include_next=True)[0].tolist()
        assert batched[i, : len(alone)].tolist() == alone
        assert batched[i, len(alone):].eq(0).all()


def test_hand_checked_cases():
    ent = torch.tensor([[0.1, 2.0, 0.1, 2.0, 0.1, 0.1, 2.0]])
    assert patch_lengths(PatchingParams(threshold=1.0), ent).tolist() == [[1, 1, 2, 3]]
    assert patch_lengths(PatchingParams(threshold=1.0), ent, include_next=True).tolist() == [[1, 1, 2, 3, 0]]
    assert patch_lengths(PatchingParams(mode="static", patch_size=3), ent).tolist() == [[1, 2, 3, 1]]
    text = torch.tensor([list(b"ab cd, ef")])
    assert patch_lengths(PatchingParams(mode="space"), None, text).tolist() == [[1, 2, 4, 2]]
    rising = torch.tensor([[0.0, 0.5, 1.0, 3.0, 3.1, 0.0, 2.0]])
    assert patch_lengths(PatchingParams(mode="monotonic", threshold=1.0), rising).tolist() == [[1, 3, 3]]


def test_patch_ids_from_lengths_with_padding():
    lengths = torch.tensor([[1, 2, 3, 0], [1, 5, 0, 0]])
    ids = patch_ids_from_lengths(lengths, 6)
    assert ids.tolist() == [[0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1]]


def test_params_key_is_stable_and_distinct():
    a = PatchingParams(threshold=1.25)
    assert a.key() == PatchingParams(threshold=1.25).key()
    assert a.key() != PatchingParams(threshold=1.3).key()
    assert a.key().startswith("entropy-t1.25-")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.floats(0, 5, allow_nan=False, width=32), min_size=0, max_size=40), min_size=1, max_size=6),
       modes, st.floats(0, 5), st.one_of(st.none(), st.integers(1, 7)))
def test_flat_patching_equals_per_document(docs, mode, threshold, max_len):
    from blt_model.patching import patch_lengths_flat

    params = _params(mode, threshold, max_len)
    flat = torch.tensor([x for d in docs for x in d], dtype=torch.float32)
    offsets = torch.tensor([0] + [len(d) for d in docs]).cumsum(0)
    byte_values = (flat * 50).long() % 256
    lengths, per_doc = patch_lengths_flat(params, offsets, flat, byte_values)
    pieces = lengths.split(per_doc.tolist())
    for doc, piece in zip(docs, pieces):
        if not doc:
            assert piece.numel() == 0
            continue
        ent = torch.tensor([doc])
        alone = patch_lengths(params, ent, (ent * 50).long() % 256 if mode == "space" else None)
        assert piece.tolist() == alone[0].tolist()
