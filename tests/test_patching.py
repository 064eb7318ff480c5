"""Patching rules against per-position re-statements of their references (hypothesis) and hand-checked cases.

References: HF ``BltPatcher`` for ``entropy`` (also in test_hf_parity), bytelatent ``bytelatent/data/patcher.py``
(``find_entropy_patch_start_ids`` with threshold / monotonicity / threshold_add / no threshold = top-k,
``find_space_patch_start_ids``, ``patch_lengths_from_start_ids``) for the others; ``threshold_or_rise`` and
``spacebyte`` are this project's earlier rules, restated as loops.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blt_model.patching import (
    PATCH_MODES,
    THRESHOLD_MODES,
    PatchingParams,
    patch_ids_from_lengths,
    patch_lengths,
    patch_lengths_flat,
)

entropy_rows = st.lists(st.floats(0, 5, allow_nan=False, width=32), min_size=1, max_size=120)
# Few distinct values make ties and equal rises common (the places where rules differ most).
coarse_rows = st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0]), min_size=1, max_size=60)
byte_rows = st.lists(st.one_of(st.integers(0, 255), st.sampled_from([-4, -3, -2, -1, 32, 44, 0xC3, 0xA9, 97])),
                     min_size=1, max_size=80)
modes = st.sampled_from(PATCH_MODES)
f32 = np.float32


# ----- reference re-statements (bytelatent indexing: e' = e[1:], start ids may reach seq_len) -----------------
def _bytelatent_entropy_start_ids(e, mode, threshold, threshold_add, patch_size, include_next):
    n = len(e)
    ids = [0, 1]
    ep = [f32(x) for x in e[1:]]  # ep[j] scores byte j + 2
    if mode == "topk":
        k = max(0, min(int(n // patch_size) - 2, len(ep)))  # bytelatent's topk(k) needs 0 <= k <= len(ep)
        chosen = sorted(range(len(ep)), key=lambda j: (-ep[j], j))[:k]
        return ids + sorted(j + 2 for j in chosen)
    thr, add = f32(threshold), f32(threshold_add if threshold_add is not None else 0)
    mask = []
    for j in range(len(ep)):
        if mode == "entropy":
            m = ep[j] > thr
        elif mode == "monotonic":
            m = True if j == 0 else f32(ep[j] - ep[j - 1]) > thr
        elif mode == "threshold_add":
            # condition[j-1] = rise > t_add AND e' > t AND NOT initial_mask[j-1] (initial mask: only index 0)
            m = True if j == 0 else bool(f32(ep[j] - ep[j - 1]) > add and ep[j] > thr and j - 1 != 0)
        elif mode == "threshold_or_rise":  # this project's earlier threshold_add: either condition
            rise = f32(ep[j] - (ep[j - 1] if j else f32(e[0])))
            m = bool(ep[j] > thr or rise > add)
        else:
            raise AssertionError(mode)
        mask.append(m)
    if not include_next:
        mask = mask[:-1]
    return ids + [j + 2 for j, m in enumerate(mask) if m]


def _bytelatent_space_start_ids(b):
    def boundary(x):
        return x < 48 or 57 < x < 65 or 90 < x < 97 or 122 < x < 128 or x >= 0xC0

    m = [boundary(x) for x in b]
    first = [m[0]] + [m[i] and not m[i - 1] for i in range(1, len(b))]
    first = [f or x < 0 for f, x in zip(first, b)]  # special ids (token < OFFSET) always end a patch
    start_mask = [True, True] + first[1:]
    return [p for p, s in enumerate(start_mask) if s]


def _spacebyte_start_ids(b):
    def space(x):
        return x < 128 and not (48 <= x <= 57 or 65 <= x <= 90 or 97 <= x <= 122)

    return [0, 1] + [i for i in range(2, len(b)) if space(b[i - 1]) and not space(b[i])]


def _lengths_from_start_ids(ids, total):
    """bytelatent ``patch_lengths_from_start_ids`` for one row, trailing zero-length patches trimmed."""
    ids = [i for i in ids if i <= total]
    ends = [nxt - 1 for nxt in ids[1:]] + [total - 1]
    lengths = [end - start + 1 for start, end in zip(ids, ends)]
    while lengths and lengths[-1] == 0:
        lengths.pop()
    return lengths


def _split_large(lengths, m):
    out = []
    for x in lengths:
        while x > m:
            out.append(m)
            x -= m
        out.append(x)
    return out


def _ours(params, e=None, b=None, include_next=False):
    ent = torch.tensor([e], dtype=torch.float32) if e is not None else None
    byt = torch.tensor([b]) if b is not None else None
    return patch_lengths(params, ent, byt, include_next=include_next)[0].tolist()


def _as_bytelatent_next_token(lengths):
    """Ours with include_next (HF: trailing zero-length patch) -> bytelatent's include_next_token=True."""
    return lengths[:-1] + [lengths[-1] + 1]


# ----- property tests against the references ---------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.one_of(entropy_rows, coarse_rows), st.sampled_from(THRESHOLD_MODES), st.sampled_from([0.0, 0.4, 1.0, 2.2]),
       st.sampled_from([0.0, 0.5, 1.0]), st.one_of(st.none(), st.integers(1, 7)))
def test_threshold_modes_equal_reference(row, mode, threshold, threshold_add, max_len):
    params = PatchingParams(mode, threshold, threshold_add, 4, max_len)
    for include_next in (False, True):
        ids = _bytelatent_entropy_start_ids(row, mode, threshold, threshold_add, 4, include_next)
        expected = _lengths_from_start_ids(ids, len(row) + include_next)
        if include_next:
            ours = _ours(PatchingParams(mode, threshold, threshold_add, 4), row, include_next=True)
            assert _as_bytelatent_next_token(ours) == expected
        else:
            if max_len is not None:
                expected = _split_large(expected, max_len)
            assert _ours(params, row) == expected


@settings(max_examples=200, deadline=None)
@given(st.one_of(entropy_rows, coarse_rows), st.sampled_from([1, 2, 3, 4.5, 6, 1000]))
def test_topk_equals_reference(row, patch_size):
    params = PatchingParams("topk", None, None, patch_size)
    for include_next in (False, True):
        ids = _bytelatent_entropy_start_ids(row, "topk", None, None, patch_size, include_next)
        expected = _lengths_from_start_ids(ids, len(row) + include_next)
        ours = _ours(params, row, include_next=include_next)
        assert (_as_bytelatent_next_token(ours) if include_next else ours) == expected
    if len(row) >= 2:  # the budget: len // patch_size patches (the next byte's patch counted)
        budget = min(len(row), max(2, int(len(row) // patch_size)))
        assert len(_ours(params, row, include_next=True)) == budget


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 5, allow_nan=False, width=32), min_size=2, max_size=80, unique=True),
       st.sampled_from([2, 3, 4]))
def test_topk_equals_torch_topk_without_ties(row, patch_size):
    """bytelatent calls ``entropies[:, 1:].topk(len // patch_size - 2)``; without ties that set is unique."""
    k = len(row) // patch_size - 2
    if k < 0 or k > len(row) - 1:
        return
    picked = torch.tensor(row[1:]).topk(k).indices.sort().values + 2
    ids = [0, 1] + picked.tolist()
    expected = _lengths_from_start_ids(ids, len(row))
    assert _ours(PatchingParams("topk", None, None, patch_size), row) == expected


@settings(max_examples=200, deadline=None)
@given(byte_rows, st.one_of(st.none(), st.integers(1, 5)))
def test_space_equals_bytelatent(row, max_len):
    for include_next in (False, True):
        expected = _lengths_from_start_ids(_bytelatent_space_start_ids(row), len(row) + include_next)
        if include_next:
            assert _as_bytelatent_next_token(_ours(PatchingParams("space"), b=row, include_next=True)) == expected
        else:
            if max_len is not None:
                expected = _split_large(expected, max_len)
            assert _ours(PatchingParams("space", max_patch_length=max_len), b=row) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=80))
def test_spacebyte_equals_its_rule(row):
    expected = _lengths_from_start_ids(_spacebyte_start_ids(row), len(row))
    assert _ours(PatchingParams("spacebyte"), b=row) == expected


def _params(mode: str, threshold: float, max_len: int | None) -> PatchingParams:
    return PatchingParams(mode=mode, threshold=threshold, threshold_add=0.7, patch_size=3, max_patch_length=max_len)


@settings(max_examples=150, deadline=None)
@given(entropy_rows, modes, st.floats(-1, 6), st.one_of(st.none(), st.integers(1, 9)))
def test_lengths_cover_the_sequence(row, mode, threshold, max_len):
    ent = torch.tensor([row])
    byte_values = (ent * 50).long() % 256
    params = _params(mode, threshold, max_len)
    lengths = patch_lengths(params, ent, byte_values if params.needs_bytes else None)
    values = lengths[0].tolist()
    assert all(v >= 1 for v in values)
    assert sum(values) == len(row)
    assert values[0] == 1  # the first byte is always a patch of its own
    if max_len is not None:
        assert max(values) <= max_len


@settings(max_examples=150, deadline=None)
@given(entropy_rows, st.sampled_from(THRESHOLD_MODES), st.floats(-1, 6), st.floats(0, 2),
       st.one_of(st.none(), st.integers(1, 9)))
def test_patch_count_is_monotone_in_threshold(row, mode, threshold, delta, max_len):
    ent = torch.tensor([row])
    low = patch_lengths(_params(mode, threshold, max_len), ent)
    high = patch_lengths(_params(mode, threshold + delta, max_len), ent)
    assert (high > 0).sum() <= (low > 0).sum()


@settings(max_examples=100, deadline=None)
@given(st.lists(entropy_rows, min_size=1, max_size=5), modes, st.floats(0, 5))
def test_batched_rows_equal_single_rows(rows, mode, threshold):
    """Padding a batch changes nothing: each row's lengths equal those computed alone."""
    width = max(len(r) for r in rows)
    ent = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ent[i, : len(r)] = torch.tensor(r)
    byte_values = (ent * 50).long() % 256
    seq_lengths = torch.tensor([len(r) for r in rows])
    params = _params(mode, threshold, None)
    batched = patch_lengths(params, ent, byte_values, seq_lengths=seq_lengths, include_next=True)
    for i, r in enumerate(rows):
        alone = patch_lengths(params, ent[i : i + 1, : len(r)], byte_values[i : i + 1, : len(r)],
                              include_next=True)[0].tolist()
        assert batched[i, : len(alone)].tolist() == alone
        assert batched[i, len(alone):].eq(0).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.floats(0, 5, allow_nan=False, width=32), min_size=0, max_size=40), min_size=1, max_size=6),
       modes, st.floats(0, 5), st.one_of(st.none(), st.integers(1, 7)))
def test_flat_patching_equals_per_document(docs, mode, threshold, max_len):
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
        alone = patch_lengths(params, ent, (ent * 50).long() % 256 if params.needs_bytes else None)
        assert piece.tolist() == alone[0].tolist()


# ----- hand-checked cases ------------------------------------------------------------------------------------
def test_hand_checked_cases():
    ent = [0.1, 2.0, 0.1, 2.0, 0.1, 0.1, 2.0]
    assert _ours(PatchingParams(threshold=1.0), ent) == [1, 1, 2, 3]
    assert _ours(PatchingParams(threshold=1.0), ent, include_next=True) == [1, 1, 2, 3, 0]
    assert _ours(PatchingParams(mode="static", patch_size=3), ent) == [1, 2, 3, 1]
    # bytelatent space: "a", "b ", "cd,", " ef" (the patch ends on the first byte of a boundary run)
    assert _ours(PatchingParams(mode="space"), b=list(b"ab cd, ef")) == [1, 2, 3, 3]
    assert _ours(PatchingParams(mode="spacebyte"), b=list(b"ab cd, ef")) == [1, 2, 4, 2]
    # A UTF-8 lead byte is a boundary byte: "a", "\xc3", "\xa9 ", "b".
    assert _ours(PatchingParams(mode="space"), b=list("aé b".encode())) == [1, 1, 2, 1]
    # Special ids (negative = token id - 4) end a patch, even inside a run: BOS, "ab ", EOS / "a", " ", EOS, " b".
    assert _ours(PatchingParams(mode="space"), b=[-3, 97, 98, 32, -2]) == [1, 3, 1]
    assert _ours(PatchingParams(mode="space"), b=[97, 32, -2, 32, 98]) == [1, 1, 1, 2]
    # bytelatent monotonic: byte 2 always starts; then rises above 1.0 at t=3 (-> byte 4) and t=6 (-> next).
    rising = [0.0, 0.5, 1.0, 3.0, 3.1, 0.0, 2.0]
    assert _ours(PatchingParams(mode="monotonic", threshold=1.0), rising) == [1, 1, 2, 3]
    assert _ours(PatchingParams(mode="monotonic", threshold=1.0), rising, include_next=True) == [1, 1, 2, 3, 0]
    both = [0.0, 0.5, 3.0, 0.2, 2.5, 2.6, 0.1]
    # threshold_add needs BOTH: only t=4 (2.5 > 1.0, rise 2.3 > 0.5); t=2 can never start byte 3.
    assert _ours(PatchingParams("threshold_add", 1.0, 0.5), both) == [1, 1, 3, 2]
    # threshold_or_rise takes EITHER: t=2, t=4, t=5.
    assert _ours(PatchingParams("threshold_or_rise", 1.0, 0.5), both) == [1, 2, 2, 1, 1]
    # topk, 8 bytes / patch_size 2 = 4 patches: bytes 0, 1 and the two highest scores t=7 (next byte), t=2.
    peaks = [9.0, 0.1, 3.0, 0.2, 2.5, 0.3, 0.4, 5.0]
    assert _ours(PatchingParams("topk", None, patch_size=2), peaks, include_next=True) == [1, 2, 5, 0]
    assert _ours(PatchingParams("topk", None, patch_size=2), peaks) == [1, 2, 5]
    # One byte: byte 1 (the next byte) always starts a patch, as in HF and bytelatent.
    assert _ours(PatchingParams(threshold=1.0), [0.0], include_next=True) == [1, 0]


def test_params_validation_and_keys():
    a = PatchingParams(threshold=1.25)
    assert a.key() == PatchingParams(threshold=1.25).key()
    assert a.key() != PatchingParams(threshold=1.3).key()
    assert a.key().startswith("entropy-t1.25-")
    assert PatchingParams("topk", None, patch_size=4.5).key().startswith("topk-p4.5-")
    # Patch sets stored under the earlier rules of a renamed-in-place mode are never mistaken for new ones.
    for params in (PatchingParams("space"), PatchingParams("monotonic", 1.0), PatchingParams("threshold_add", 1, 1)):
        old_digest = hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:8]
        assert not params.key().endswith(old_digest)
    entropy = PatchingParams(threshold=1.25)
    assert entropy.key().endswith(hashlib.sha256(json.dumps(asdict(entropy), sort_keys=True).encode()).hexdigest()[:8])
    assert PatchingParams("topk", None).has_threshold is False and PatchingParams("topk", None).needs_entropies
    assert PatchingParams("spacebyte").needs_bytes and not PatchingParams("entropy").needs_bytes
    with pytest.raises(ValueError, match="threshold_add"):
        PatchingParams("threshold_add", 1.0)
    with pytest.raises(ValueError, match="integer"):
        PatchingParams("static", patch_size=4.5)


def test_patch_ids_from_lengths_with_padding():
    lengths = torch.tensor([[1, 2, 3, 0], [1, 5, 0, 0]])
    ids = patch_ids_from_lengths(lengths, 6)
    assert ids.tolist() == [[0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1]]
