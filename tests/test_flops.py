"""FLOP accounting against ``torch.utils.flop_counter.FlopCounterMode`` on the model's own forward + backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from blt_model import ByteLatentTransformer
from blt_model.presets import blt_preset
from training.flops import FlopMeter, blt_step_flops, device_peak_flops, entropy_flops_per_byte, gpu_table_peak

aten = torch.ops.aten
# The counter has formulas for the CUDA SDPA kernels only; the CPU flash kernel is the same computation, so the
# counter's own formulas are registered for it.
CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(g, q, k, v),
}


def counted(model: ByteLatentTransformer, tokens, patch_lengths) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs as the counter sees them."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        loss = model(tokens, patch_lengths, tokens).loss
        forward = counter.get_total_flops()
        loss.backward()
    return forward, counter.get_total_flops()


def random_lengths(gen: torch.Generator, batch: int, seq_len: int, mean: float, pad: int) -> torch.Tensor:
    """Patch lengths summing to seq_len per row, drawn around ``mean``, right-padded with ``pad`` extra zeros."""
    rows = []
    for _ in range(batch):
        lengths, left = [], seq_len
        while left:
            n = min(left, int(torch.randint(1, int(2 * mean), (1,), generator=gen)))
            lengths.append(n)
            left -= n
        rows.append(lengths)
    width = max(len(r) for r in rows) + pad
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


CONFIGS = {
    "tiny": {},
    "gqa_projection_window": dict(  # GQA everywhere, encoder output != global width (projection), blocked window
        local_attention_window_len=32, cross_attn_k=3,
        encoder_config=dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            intermediate_size=96, cross_attn_all_layers=True),
        decoder_config=dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            intermediate_size=96, cross_attn_all_layers=False),
        global_config=dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=3,
                           intermediate_size=192)),
    "paper_proportions": dict(  # wide global, small locals, no window over the sequence
        local_attention_window_len=None,
        encoder_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64),
        decoder_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64),
        global_config=dict(hidden_size=192, num_attention_heads=4, num_hidden_layers=4, intermediate_size=384)),
}
CASES = [  # config, seq_len, patch-length distribution (mean bytes per patch), extra padding patches
    ("tiny", 96, 4.0, 0),
    ("tiny", 300, 6.0, 3),  # window 128: blocked attention
    ("gqa_projection_window", 100, 3.0, 2),  # 100 > 2 x 32: blocked
    ("gqa_projection_window", 60, 8.0, 0),  # dense masked
    ("paper_proportions", 128, 4.5, 1),
    ("paper_proportions", 128, 1.0, 0),  # every byte its own patch
]


@pytest.mark.parametrize(("name", "seq_len", "mean", "pad"), CASES)
def test_step_flops_match_the_counter(name, seq_len, mean, pad):
    torch.manual_seed(0)
    cfg = blt_preset("tiny", **CONFIGS[name])
    model = ByteLatentTransformer(cfg)
    gen = torch.Generator().manual_seed(seq_len)
    patch_lengths = random_lengths(gen, 2, seq_len, mean, pad)
    tokens = torch.randint(4, 260, (2, seq_len), generator=gen)
    forward, total = counted(model, tokens, patch_lengths)
    ours = blt_step_flops(cfg, 2, seq_len, patch_lengths.shape[1])
    # What the counter can see matches to rounding; the encoder's elementwise attention products are extra.
    assert ours.forward - ours.elementwise / 3 == pytest.approx(forward, rel=1e-9)
    assert ours.train - ours.elementwise == pytest.approx(total, rel=1e-9)
    assert abs(ours.train - total) / total < 0.02
    print(f"{name} L={seq_len} mean={mean}: ours {ours.train:.4e} counter {total:.4e} "
          f"({(ours.train - total) / total:+.3%})")


def test_meter_totals_budget_and_resume():
    cfg = blt_preset("tiny")
    step = blt_step_flops(cfg, 4, 64, 20).train
    meter = FlopMeter(cfg, peak_per_device=1e12, budget=2.5 * step)
    cpu = torch.device("cpu")
    reached = []
    for _ in range(3):
        meter.batch((4, 64), 20)
        reached.append(meter.end_step(cpu))
    assert reached == [False, False, True]
    record = meter.record(elapsed=1.0, steps=3)
    assert record["flops"] == pytest.approx(step)
    assert record["flops_total"] == pytest.approx(3 * step)
    assert record["flops_per_byte"] == pytest.approx(step / 256)
    assert record["mfu"] == pytest.approx(3 * step / 1e12)
    resumed = FlopMeter(cfg)
    resumed.load_state_dict(meter.state_dict())
    assert resumed.total == meter.total


def test_peaks_and_entropy_flops():
    assert gpu_table_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_table_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_table_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_table_peak("NVIDIA L4") == 121e12
    assert gpu_table_peak("Some Unknown Card") is None
    assert device_peak_flops(torch.device("cpu"), bf16=False, override=5e9) == 5e9
    assert device_peak_flops(torch.device("cpu"), bf16=False) > 1e8  # measured
    # The released entropy model's shape (768 x 14, window 512): the README's 198.6 M + 22.0 M per byte.
    from blt_model.config import EntropyModelConfig

    dense, attention = entropy_flops_per_byte(EntropyModelConfig())
    assert dense / 1e6 == pytest.approx(198.6, abs=0.1)
    assert attention / 1e6 == pytest.approx(22.0, abs=0.1)


def test_lr_schedule_follows_the_budget():
    cfg = blt_preset("tiny")
    meter = FlopMeter(cfg, budget=100.0)
    schedule = meter.lr_schedule(lambda step: float(step), steps=10)
    assert schedule(3) == 0.0  # no FLOPs spent yet: the schedule's start, whatever the step
    meter.total = 55.0
    assert schedule(1) == 6.0  # round(10 x 0.55)
    meter.total = 500.0
    assert schedule(1) == 10.0
    assert FlopMeter(cfg).lr_schedule(abs, 10) is abs  # no budget: steps drive it


@pytest.mark.timeout(300)
def test_training_stops_at_the_budget_and_resumes_the_count(tmp_path):
    """--flops-budget ends a run at the step that reaches it; flops_total survives a stop and resume."""
    from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess
    from training.blt_loop import run_training
    from training.config import TrainConfig
    from training.metrics import read_metrics

    write_object(f"{tmp_path}/raw/a.jsonl", jsonl_bytes(make_docs(1, 80)))
    save_tiny_entropy_model(f"{tmp_path}/em")
    run_preprocess(PreprocessConfig(inputs=f"{tmp_path}/raw/*.jsonl", output=f"{tmp_path}/ds",
                                    entropy_model=f"{tmp_path}/em", use_ray=False))
    cfg = blt_preset("tiny")
    step = blt_step_flops(cfg, 2, 64, 64 // 4).train  # roughly one step (patch padding varies)
    common = dict(dataset=f"{tmp_path}/ds", output=f"{tmp_path}/run", seq_len=64, batch_size=2, steps=1000,
                  log={"every": 1}, cluster={"num_workers": 1}, export_hf=False, flops_budget=6.5 * step,
                  checkpoint={"every": 2})
    run_training(TrainConfig(**common, drills={"stop_after": 3}), use_ray=False)
    run_training(TrainConfig(**common), use_ray=False)
    records = read_metrics(f"{tmp_path}/run")
    totals = [r["flops_total"] for r in records]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)) and 4 <= len(records) < 1000
    assert totals == sorted(totals) and totals[-1] >= 6.5 * step > totals[-2]
    for earlier, later in zip(records, records[1:], strict=False):
        assert later["flops_total"] == pytest.approx(earlier["flops_total"] + later["flops"])
    assert all(r["mfu"] > 0 and r["flops_per_byte"] > 0 for r in records)
