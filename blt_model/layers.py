"""Building blocks shared by the entropy model and the BLT: RMSNorm, interleaved RoPE, SwiGLU, attention.

Numerics follow HF's Blt modules (RMSNorm in float32, RoPE on interleaved pairs, SwiGLU), while the
projections are fused (one QKV matmul, one gate/up matmul) for speed; ``formats.hf`` splits them on export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionPlan, CachedWindowPlan
from .config import TransformerConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def rope_cos_sin(
    length: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [L, head_dim/2] for positions 0..L-1 (RoPE is relative, so offsets never matter)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def rope_at(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin [..., head_dim/2] for arbitrary positions, computed exactly as ``rope_cos_sin`` (float32 product),
    so a position gets the same angles whether it is scored alone or inside a stream."""
    device = positions.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def apply_rope_fast(x: torch.Tensor, rot: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` in one kernel: a rotated pair is the complex product (a + ib)(cos + i sin).

    ``rot`` is ``torch.complex(cos, sin)`` (float32 only; other dtypes fall back to ``apply_rope``)."""
    if rot is None or x.dtype != torch.float32:
        return apply_rope(x, cos, sin)
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rot).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of [B, H, L, D]; same convention as HF Blt / Meta's bytelatent."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, out, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan):
        bsz, length, _ = x.shape
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(bsz, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout = self.dropout if self.training else 0.0
        out = plan.attend(q, k, v, dropout)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, length, q_size))

    def forward_cached(self, x: torch.Tensor, rope, plan: CachedWindowPlan, past_k, past_v):
        """Inference step of a stream. x [B, L, hidden]; past_k/v [B, W-1, Hkv, D] (post-RoPE keys of the
        previous step). Returns the attention output [B, L, H*D] (before o_proj) and the key/value frames."""
        bsz, length, _ = x.shape
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        q = apply_rope_fast(q.view(bsz, length, self.num_heads, self.head_dim), *rope)
        k = apply_rope_fast(k.view(bsz, length, self.num_kv_heads, self.head_dim), *rope)
        k_frame = torch.cat((past_k, k.to(past_k.dtype)), dim=1)
        v_frame = torch.cat((past_v, v.reshape(bsz, length, self.num_kv_heads, self.head_dim).to(past_v.dtype)), dim=1)
        return plan.attend(q.to(k_frame.dtype), k_frame, v_frame), k_frame, v_frame


def linear_residual(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear, fuse: bool) -> torch.Tensor:
    """residual + linear(x); fused into the GEMM (beta = 1) when not under autocast, saving a pass over memory."""
    if not fuse:
        return residual + linear(x)
    shape = residual.shape
    out = torch.addmm(residual.reshape(-1, shape[-1]), x.reshape(-1, x.shape[-1]), linear.weight.t())
    return out.view(shape)


def rms_norm_fused(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in one kernel for float32 (the weight is applied inside ``F.rms_norm``)."""
    if x.dtype != torch.float32 or norm.weight.dtype != torch.float32:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope, plan: AttentionPlan) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, plan)
        return x + self.mlp(self.post_attention_layernorm(x))

    @torch.inference_mode()
    def forward_cached(self, x: torch.Tensor, rope, plan: CachedWindowPlan, past_k, past_v, fuse: bool = True):
        """Inference-only step with a sliding-window KV cache; in-place activation and residuals fused into the
        output GEMMs (no autograd here, so no saved tensors to protect). Returns (x, k_frame, v_frame)."""
        attn, k_frame, v_frame = self.self_attn.forward_cached(
            rms_norm_fused(self.input_layernorm, x), rope, plan, past_k, past_v
        )
        x = linear_residual(x, attn, self.self_attn.o_proj, fuse)
        gate, up = self.mlp.gate_up_proj(rms_norm_fused(self.post_attention_layernorm, x)).chunk(2, dim=-1)
        hidden = F.silu(gate, inplace=True).mul_(up)
        return linear_residual(x, hidden, self.mlp.down_proj, fuse), k_frame, v_frame


class CrossAttention(nn.Module):
    """HF ``BltCrossAttention``: RMSNorm on both sides, output = o_proj(attn) + query input.

    BLT cross-attention is block-diagonal (a patch only meets its own bytes), so instead of a dense
    [queries, keys] score matrix under a mask we gather exactly the entries that can interact:
    O(L * k) work instead of O(L * P * k).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.kv_proj = nn.Linear(cfg.hidden_size, 2 * self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def _kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V as [..., H, D], with GQA groups expanded to the query heads (head h uses kv head h // rep)."""
        k, v = self.kv_proj(self.k_norm(states)).chunk(2, dim=-1)
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=-2), v.repeat_interleave(rep, dim=-2)
        return k, v

    def patches_from_bytes(self, patch_queries: torch.Tensor, byte_states: torch.Tensor, patch_ids: torch.Tensor):
        """Encoder direction. patch_queries [B, P, k, D]; byte_states [B, L, D]; patch_ids [B, L] (nondecreasing).

        Each of a patch's k queries attends to the bytes whose patch id is that patch. The softmax runs per
        segment (scatter max / scatter add). A patch with no bytes sees HF's fully-masked row: a uniform average
        over all L bytes.
        """
        bsz, num_patches, k_slots, dim = patch_queries.shape
        heads, hd = self.num_heads, self.head_dim
        q = self.q_proj(self.q_norm(patch_queries)).view(bsz, num_patches, k_slots, heads, hd)
        keys, values = self._kv(byte_states)  # [B, L, H, D]
        batch_index = torch.arange(bsz, device=patch_ids.device)[:, None]
        q_per_byte = q[batch_index, patch_ids]  # [B, L, k, H, D]
        scores = (q_per_byte * keys.unsqueeze(2)).sum(-1).float() * hd**-0.5  # [B, L, k, H]
        index = patch_ids[:, :, None, None].expand_as(scores)
        seg_max = scores.new_full((bsz, num_patches, k_slots, heads), float("-inf"))
        seg_max = seg_max.scatter_reduce(1, index, scores.detach(), reduce="amax", include_self=True)
        weights = torch.exp(scores - seg_max.gather(1, index))
        denom = weights.new_zeros((bsz, num_patches, k_slots, heads)).scatter_add(1, index, weights)
        weighted = weights.to(values.dtype).unsqueeze(-1) * values.unsqueeze(2)  # [B, L, k, H, D]
        numer = values.new_zeros((bsz, num_patches, k_slots, heads, hd))
        numer = numer.scatter_add(1, index.unsqueeze(-1).expand_as(weighted), weighted)
        empty = (denom == 0).unsqueeze(-1)
        out = numer / denom.clamp_min(torch.finfo(denom.dtype).tiny).unsqueeze(-1).to(numer.dtype)
        out = torch.where(empty, values.mean(dim=1)[:, None, None], out)
        out = self.o_proj(out.reshape(bsz, num_patches, k_slots, heads * hd))
        return out + patch_queries

    def bytes_from_patches(self, byte_queries: torch.Tensor, patch_states: torch.Tensor, patch_ids: torch.Tensor):
        """Decoder direction. byte_queries [B, L, D]; patch_states [B, P, k, D]; each byte sees its patch's k slots."""
        bsz, length, _ = byte_queries.shape
        heads, hd = self.num_heads, self.head_dim
        q = self.q_proj(self.q_norm(byte_queries)).view(bsz, length, heads, 1, hd)
        keys, values = self._kv(patch_states)  # [B, P, k, H, D]
        batch_index = torch.arange(bsz, device=patch_ids.device)[:, None]
        keys = keys[batch_index, patch_ids].transpose(2, 3)  # [B, L, H, k, D]
        values = values[batch_index, patch_ids].transpose(2, 3)
        probs = torch.softmax((q @ keys.transpose(-1, -2)).float() * hd**-0.5, dim=-1).to(values.dtype)
        out = (probs @ values).reshape(bsz, length, heads * hd)  # [B, L, H*D]
        return self.o_proj(out) + byte_queries


class TransformerStack(nn.Module):
    """``num_hidden_layers`` layers with RoPE; attention window None = full causal."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def rope(self, length: int, like: torch.Tensor):
        return rope_cos_sin(length, self.cfg.head_dim, self.cfg.rope_theta, like.device, like.dtype)

    def forward(self, x: torch.Tensor, window: int | None, impl: str, segment_ids: torch.Tensor | None = None):
        rope = self.rope(x.shape[1], x)
        plan = AttentionPlan.build(x.shape[1], window, x.device, impl, segment_ids)
        for layer in self.layers:
            x = layer(x, rope, plan)
        return x
