"""FLOP accounting for BLT training: FLOPs of one step from the config and the batch's shape, MFU, budgets.

Convention (the one ``torch.utils.flop_counter.FlopCounterMode`` uses, so the two can be checked against each
other): FLOPs = 2 x the multiply-adds of matmuls and attention; elementwise work (norms, RoPE, softmax, SwiGLU
gating, hash n-gram lookups and their sums, the loss) is not counted. Backward is 2 x forward for matmuls, and
2.5 x forward for fused SDPA (flash / efficient / CPU flash kernels recompute the scores in backward).

What is counted is what our model computes, not an idealised model:

* self-attention over ``L`` positions is counted as the SDPA call the ``AttentionPlan`` makes: a causal or
  masked dense call counts the full ``L x L`` score matrix (the counter ignores masks); beyond twice the window the
  blocked plan counts ``ceil(L / Bq)`` blocks of ``Bq x (W + Bq)`` scores;
* cross-attention is block-sparse: each byte meets only its own patch's ``k`` slots (``4 x L x k x H x hd``
  forward per direction), never the dense ``L x P`` product. In the decoder these are matmuls; in the encoder
  they are elementwise products and scatter sums, which the counter does not see, so they are kept apart in
  ``StepFlops.elementwise`` (under 0.2% of a step in tests/test_flops.py's configurations);
* the global transformer runs over the batch's padded patch dimension ``P`` (zero-length patches included).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from blt_model.attention import query_block_size
from blt_model.config import BltConfig, EntropyModelConfig, TransformerConfig

from . import distributed

MATMUL_BACKWARD = 2.0  # grad wrt input + grad wrt weight
SDPA_BACKWARD = 2.5  # fused kernels: recompute QK^T, then dV, dP, dQ, dK

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from the vendors' datasheets; matched against the CUDA device
# name, most specific first.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 125e12),  # AWS variant of the A10 (A10 datasheet)
    ("A10", 125e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
    ("T4", 65e12),  # fp16
)


@dataclass
class Part:
    """Forward FLOPs of one component, split by how the backward pass scales them."""

    matmul: float = 0.0
    sdpa: float = 0.0
    elementwise: float = 0.0  # attention products done as elementwise ops (not seen by the counter)

    @property
    def forward(self) -> float:
        return self.matmul + self.sdpa + self.elementwise

    @property
    def backward(self) -> float:
        return MATMUL_BACKWARD * (self.matmul + self.elementwise) + SDPA_BACKWARD * self.sdpa


@dataclass
class StepFlops:
    """FLOPs of one forward(+backward) over one batch, by component."""

    parts: dict[str, Part] = field(default_factory=dict)

    def add(self, name: str, matmul: float = 0.0, sdpa: float = 0.0, elementwise: float = 0.0) -> None:
        part = self.parts.setdefault(name, Part())
        part.matmul += matmul
        part.sdpa += sdpa
        part.elementwise += elementwise

    @property
    def forward(self) -> float:
        return sum(p.forward for p in self.parts.values())

    @property
    def backward(self) -> float:
        return sum(p.backward for p in self.parts.values())

    @property
    def train(self) -> float:
        return self.forward + self.backward

    @property
    def elementwise(self) -> float:
        """Forward + backward FLOPs the counter does not see (subtract to compare with it)."""
        return sum(p.elementwise * (1 + MATMUL_BACKWARD) for p in self.parts.values())


def _linear(rows: float, fan_in: int, fan_out: int) -> float:
    return 2.0 * rows * fan_in * fan_out


def sdpa_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int) -> float:
    """Forward FLOPs of one SDPA call (QK^T and PV), as the counter counts it: masks and causality ignored."""
    return 4.0 * batch * heads * q_len * k_len * head_dim


def self_attention_sdpa(batch: int, length: int, window: int | None, cfg: TransformerConfig) -> float:
    """Forward SDPA FLOPs of one layer under ``AttentionPlan.build``'s choice for this length and window."""
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    if window is None or window >= length or length <= 2 * window:
        return sdpa_flops(batch, heads, length, length, hd)
    block = query_block_size(window)
    blocks = math.ceil(length / block)
    return sdpa_flops(batch * blocks, heads, block, window + block, hd)


def _layer_linears(rows: float, cfg: TransformerConfig) -> float:
    d, hd = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return (_linear(rows, d, q + 2 * kv) + _linear(rows, q, d) + _linear(rows, d, 2 * cfg.intermediate_size)
            + _linear(rows, cfg.intermediate_size, d))


def _stack(out: StepFlops, name: str, batch: int, length: int, window: int | None, cfg: TransformerConfig) -> None:
    layers = cfg.num_hidden_layers
    out.add(name, matmul=layers * _layer_linears(batch * length, cfg),
            sdpa=layers * self_attention_sdpa(batch, length, window, cfg))


def _cross_projections(cfg: TransformerConfig, query_rows: float, kv_rows: float) -> float:
    d, hd = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return _linear(query_rows, d, q) + _linear(kv_rows, d, 2 * kv) + _linear(query_rows, q, d)


def blt_step_flops(cfg: BltConfig, batch: int, seq_len: int, num_patches: int) -> StepFlops:
    """FLOPs of ``ByteLatentTransformer`` forward (and backward) on tokens [batch, seq_len] with patch lengths
    [batch, num_patches] (the padded width, which is what the global transformer runs over)."""
    enc, dec, glob = cfg.encoder_config, cfg.decoder_config, cfg.global_config
    window, k = cfg.local_attention_window_len, cfg.cross_attn_k
    bytes_, patches = batch * seq_len, batch * num_patches
    out = StepFlops()
    # Local encoder: layers over bytes, patch queries (max-pool, projection), one cross-attention patches <- bytes.
    _stack(out, "local_encoder", batch, seq_len, window, enc)
    out.add("encoder_cross_attention",
            matmul=_linear(patches, enc.hidden_size, enc.hidden_size * k)
            + _cross_projections(enc, patches * k, bytes_),
            elementwise=4.0 * bytes_ * k * enc.num_attention_heads * enc.head_dim)
    # Global transformer over patches (full causal attention).
    if cfg.encoder_cross_output_size is not None:
        out.add("global_transformer", matmul=_linear(patches, cfg.encoder_cross_output_size, glob.hidden_size))
    _stack(out, "global_transformer", batch, num_patches, None, glob)
    # Local decoder: global states projected to k slots per patch; cross-attention bytes <- own patch's slots.
    out.add("decoder_cross_attention", matmul=_linear(patches, glob.hidden_size, dec.hidden_size * k))
    n_cross = dec.num_hidden_layers if dec.cross_attn_all_layers else 1
    out.add("decoder_cross_attention",
            matmul=n_cross * (_cross_projections(dec, bytes_, patches * k)
                              + 4.0 * bytes_ * k * dec.num_attention_heads * dec.head_dim))
    _stack(out, "local_decoder", batch, seq_len, window, dec)
    out.add("lm_head", matmul=_linear(bytes_, dec.hidden_size, cfg.vocab_size))
    return out


def entropy_flops_per_byte(cfg: EntropyModelConfig) -> tuple[float, float]:
    """(matmul, attention) forward FLOPs per byte of entropy scoring: 2 x matmul weights (layers and LM head), and
    QK^T + PV over one full window per byte (what the sliding-window cache attends to)."""
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * cfg.intermediate_size
    dense = 2 * (cfg.num_hidden_layers * per_layer + d * cfg.vocab_size)
    window = cfg.sliding_window or cfg.max_position_embeddings
    attention = 4 * cfg.num_hidden_layers * window * d
    return float(dense), float(attention)


# ----- device peaks ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 4) -> float:
    """Best torch.mm rate (FLOP/s) on n x n matrices: the machine's practical ceiling for this dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def gpu_table_peak(name: str) -> float | None:
    """bf16 dense peak of a known GPU by its CUDA device name, or None."""
    upper = name.upper()
    for key, peak in GPU_BF16_PEAKS:
        if key.upper() in upper:
            return peak
    return None


@functools.lru_cache(maxsize=8)
def _measured_peak(device_type: str, index: int | None, dtype: torch.dtype) -> float:
    n = 2048 if device_type == "cuda" else 1024
    return matmul_peak(torch.device(device_type, index) if index is not None else torch.device(device_type), dtype, n)


def device_peak_flops(device: torch.device, bf16: bool, override: float | None = None) -> float:
    """Peak FLOP/s for MFU: ``override`` if given; a known GPU's datasheet bf16 peak; else a measured matmul peak
    (fp32 on CPU), measured once per process."""
    if override:
        return float(override)
    if device.type == "cuda":
        peak = gpu_table_peak(torch.cuda.get_device_name(device))
        if peak is not None:
            return peak
    dtype = torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32
    return _measured_peak(device.type, device.index, dtype)


# ----- the per-step meter ------------------------------------------------------------------------------------------


@dataclass
class FlopMeter:
    """Counts training FLOPs batch by batch. ``total`` (all workers) is saved into and restored from checkpoints,
    so a resumed run keeps counting where it stopped; ``budget`` ends the run at the first step that reaches it."""

    cfg: BltConfig
    peak_per_device: float = 0.0
    budget: float | None = None
    total: float = 0.0  # training FLOPs so far, all workers
    _step: float = 0.0  # this worker's FLOPs in the current step
    _window: float = 0.0  # all workers' FLOPs since the last record
    _window_local: float = 0.0  # this worker's
    _window_bytes: int = 0  # this worker's

    def batch(self, tokens_shape: tuple[int, ...], num_patches: int) -> None:
        """One micro-batch of this worker (forward + backward); ``num_patches`` = padded patch dimension."""
        batch, seq_len = tokens_shape
        self._step += blt_step_flops(self.cfg, batch, seq_len, num_patches).train
        self._window_bytes += batch * seq_len

    def end_step(self, device: torch.device) -> bool:
        """Adds the step's FLOPs over all workers (one scalar all-reduce: each worker's patch padding differs) and
        says whether the budget is reached, the same answer on every rank."""
        world = distributed.rank_world()[1]
        step_all = distributed.mean([self._step], device)[0] * world
        self.total += step_all
        self._window += step_all
        self._window_local += self._step
        self._step = 0.0
        return self.reached()

    def lr_schedule(self, schedule: Callable[[int], float], steps: int) -> Callable[[int], float]:
        """With a budget the LR schedule runs on FLOPs, not steps: at step s it is ``schedule(steps x spent share of
        the budget)``, so runs whose steps cost different FLOPs (other patchings) decay alike and end together."""
        if self.budget is None:
            return schedule
        return lambda step: schedule(min(steps, round(steps * self.total / self.budget)))

    def reached(self) -> bool:
        return self.budget is not None and self.total >= self.budget

    def record(self, elapsed: float, steps: int) -> dict:
        """Metrics since the last record: FLOPs per step (all workers), cumulative FLOPs, FLOPs per trained byte,
        and this worker's model FLOP utilisation against its device's peak."""
        out = {
            "flops": self._window / max(steps, 1),
            "flops_total": self.total,
            "flops_per_byte": self._window_local / max(self._window_bytes, 1),
            "mfu": self._window_local / max(elapsed, 1e-9) / self.peak_per_device if self.peak_per_device else 0.0,
        }
        self._window = self._window_local = 0.0
        self._window_bytes = 0
        return out

    def state_dict(self) -> dict:
        return {"flops_total": self.total}

    def load_state_dict(self, state: dict | None) -> None:
        self.total = float((state or {}).get("flops_total", 0.0))
