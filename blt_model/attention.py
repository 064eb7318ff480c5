"""Causal self-attention kernels: SDPA everywhere, flex attention (GPU) when selected.

Masks are built once per (length, window, device) and cached, because the training loop asks for the same
shapes every step; HF rebuilds a dense float mask each forward, which is one reason we are faster.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=32)
def sliding_window_mask(length: int, window: int, device: str) -> torch.Tensor:
    """Boolean [L, L] mask: query i sees keys j with i - window < j <= i (HF's sliding-window semantics)."""
    pos = torch.arange(length, device=device)
    diff = pos[:, None] - pos[None, :]
    return (diff >= 0) & (diff < window)


def packed_documents_mask(segment_ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool [B, 1, L, L]: causal, within the window, and only inside the same document (segment id)."""
    length = segment_ids.shape[1]
    base = sliding_window_mask(length, window or length, str(segment_ids.device))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (base & same).unsqueeze(1)


@functools.lru_cache(maxsize=32)
def _flex_block_mask(length: int, window: int | None, device: str):  # pragma: no cover - GPU only
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        causal = q_idx >= kv_idx
        if window is None:
            return causal
        return causal & (q_idx - kv_idx < window)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():  # pragma: no cover - GPU only
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    impl: str = "sdpa",
    dropout_p: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal (optionally sliding-window) attention over [B, H, L, D] tensors; K/V may have fewer heads (GQA).

    ``mask`` (bool [B, 1, L, L]) replaces the causal/window mask when documents are packed into one row.
    """
    length = q.shape[-2]
    gqa = k.shape[1] != q.shape[1]
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
    if impl == "flex" and q.is_cuda:  # pragma: no cover - GPU only
        block_mask = _flex_block_mask(length, window if window and window < length else None, str(q.device))
        return _compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    if impl == "eager":
        return _eager_attention(q, k, v, window)
    if window is None or window >= length:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=gqa)
    mask = sliding_window_mask(length, window, str(q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


def _eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    """Reference path (no fused kernel): plain softmax(QK^T)V, used to cross-check the fused ones."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    length = q.shape[-2]
    mask = sliding_window_mask(length, window or length, str(q.device))
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
