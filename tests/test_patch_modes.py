"""A patch mode is one registry entry (a rule plus its flags): keys, validation and the stages read the flags."""

from __future__ import annotations

import pytest
import torch

from blt_model.patching import MODE_REGISTRY, PATCH_MODES, PatchingParams, PatchMode, patch_lengths_flat, register_mode


def test_keys_and_validation_follow_each_modes_flags():
    for name in PATCH_MODES:
        spec = MODE_REGISTRY[name]
        params = PatchingParams(name, None if spec.budget else 1.0, 0.5 if "threshold_add" in spec.uses else None, 3)
        key = params.key()
        assert key.startswith(name + "-")
        assert ("-t1-" in key) == ("threshold" in spec.uses)
        assert ("-a0.5-" in key) == ("threshold_add" in spec.uses)
        assert ("-p3-" in key) == ("patch_size" in spec.uses)
        for needed in {"threshold", "threshold_add"} & set(spec.uses):
            with pytest.raises(ValueError, match="needs"):
                PatchingParams(name, **{"threshold": 1.0, "threshold_add": 0.5, needed: None})


@pytest.fixture
def even_mode():
    """A toy rule: a patch starts at every even position (bytes 0 and 1 as always)."""

    def rule(docs, params):
        return (docs.local < 2) | (docs.local % 2 == 0), docs.lengths % 2 == 0

    register_mode(PatchMode("even", rule))
    yield
    del MODE_REGISTRY["even"]


def test_a_registered_mode_patches_and_keys_without_touching_anything_else(even_mode):
    params = PatchingParams("even", threshold=None)
    assert params.key().startswith("even-") and not params.needs_entropies and not params.has_threshold
    lengths, per_doc = patch_lengths_flat(params, torch.tensor([0, 5, 7]))
    assert lengths.tolist() == [1, 1, 2, 1, 1, 1] and per_doc.tolist() == [4, 2]
    with pytest.raises(ValueError, match="unknown patch mode"):
        PatchingParams("odd")
