"""The GPU code paths on CPU: ``--compile``, ``--attn-implementation flex``, bf16 autocast and activation
checkpointing each train a few steps through the trainer's own ``build`` and match the sdpa/fp32 losses.

Tolerances: compile and flex compute the same fp32 math with fused/blocked kernels (different summation order:
~1e-6 relative per op), so 3 AdamW steps stay within 1e-4 relative. Activation checkpointing recomputes the
same ops: exact to 1e-6. bf16 autocast rounds matmul inputs to 8 mantissa bits (relative error 2^-9 = 0.2% per
element, accumulated in fp32); the loss is a mean over ~500 bytes, so its error stays well under 1%: we allow 2%.
"""

from __future__ import annotations

import pytest
import torch

from training.blt_loop import build
from training.config import TrainConfig

STEPS = 3


def _batches():
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        tokens = torch.randint(4, 260, (2, 256), generator=gen)
        lengths = torch.full((2, 64), 4)
        out.append((tokens, lengths, torch.randint(4, 260, (2, 256), generator=gen)))
    return out


def _losses(**overrides) -> list[float]:
    cfg = TrainConfig(dataset="unused", output="unused", lr=3e-3, **overrides)
    torch.manual_seed(0)
    model, train_model, optimizers, autocast = build(cfg, torch.device("cpu"), world=1)
    losses = []
    for tokens, lengths, labels in _batches():
        with autocast():
            loss = train_model(tokens, lengths, labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizers[0].step()
        optimizers[0].zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def reference() -> list[float]:
    return _losses()


@pytest.mark.parametrize(("overrides", "rtol"), [
    ({"activation_checkpointing": True}, 1e-6),
    ({"precision": "bf16"}, 2e-2),
    ({"attn_implementation": "flex"}, 1e-4),
])
def test_path_matches_sdpa_fp32(reference, overrides, rtol):
    got = _losses(**overrides)
    assert got[-1] < got[0]  # it trains
    for step, (a, b) in enumerate(zip(got, reference)):
        assert a == pytest.approx(b, rel=rtol), (overrides, step)


@pytest.mark.slow
def test_compile_matches_sdpa_fp32(reference):
    got = _losses(compile=True)
    for step, (a, b) in enumerate(zip(got, reference)):
        assert a == pytest.approx(b, rel=1e-4), step
