"""The GPU code paths on CPU: ``--compile``, bf16 autocast and activation checkpointing each train a few steps
through the trainer's own ``build`` and match the sdpa/fp32 losses; flex attention (no CPU backward in torch 2.13)
matches the sdpa forward at every state of a training run.

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
    cfg = TrainConfig(dataset="unused", output="unused", optim={"lr": 3e-3}, **overrides)
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
])
def test_path_matches_sdpa_fp32(reference, overrides, rtol):
    got = _losses(**overrides)
    assert got[-1] < got[0]  # it trains
    for step, (a, b) in enumerate(zip(got, reference)):
        assert a == pytest.approx(b, rel=rtol), (overrides, step)


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """``AttentionPlan.build`` selects flex only on CUDA; here it builds the same flex plan (block mask + compiled
    ``flex_attention``) on CPU, so the flex path itself runs, not its sdpa fallback."""
    from blt_model import attention

    original = attention.AttentionPlan.build.__func__

    def build(cls, length, window, device, impl="sdpa", segment_ids=None):
        if impl == "flex" and segment_ids is None:
            window = None if window is not None and window >= length else window
            return cls("flex", length, window, block_mask=attention._flex_block_mask(length, window, str(device)))
        return original(cls, length, window, device, impl, segment_ids)

    monkeypatch.setattr(attention.AttentionPlan, "build", classmethod(build))
    used = []
    flex = attention._compiled_flex()
    monkeypatch.setattr(attention, "_compiled_flex", lambda: lambda *a, **k: used.append(1) or flex(*a, **k))
    return used


@pytest.mark.slow
@pytest.mark.timeout(900)  # inductor compiles flex attention for CPU: ~1 min alone, minutes on a loaded machine
def test_flex_attention_matches_sdpa_fp32(flex_on_cpu):
    """torch 2.13 has no flex-attention backward on CPU, so the CPU check is the forward: the flex model's loss at
    each state of an sdpa training run (same weights, copied in) equals the sdpa loss."""
    sdpa_cfg = TrainConfig(dataset="unused", output="unused", optim={"lr": 3e-3})
    flex_cfg = TrainConfig(dataset="unused", output="unused", attn_implementation="flex")
    model, _, optimizers, _ = build(sdpa_cfg, torch.device("cpu"), world=1)
    flex_model = build(flex_cfg, torch.device("cpu"), world=1)[0]
    for tokens, lengths, labels in _batches():
        flex_model.load_state_dict(model.state_dict())
        with torch.no_grad():
            want = model(tokens, lengths, labels).loss.item()
            got = flex_model(tokens, lengths, labels).loss.item()
        assert got == pytest.approx(want, rel=1e-4)
        model(tokens, lengths, labels).loss.backward()
        optimizers[0].step()
        optimizers[0].zero_grad(set_to_none=True)
    assert flex_on_cpu  # the flex kernel really ran


@pytest.mark.slow
@pytest.mark.timeout(900)  # inductor compile of the whole model, forward and backward
def test_compile_matches_sdpa_fp32(reference):
    got = _losses(compile=True)
    for step, (a, b) in enumerate(zip(got, reference)):
        assert a == pytest.approx(b, rel=1e-4), step
