"""Causal, sliding-window and document-packed self-attention.

``AttentionPlan.build`` runs once per forward pass and decides how every layer attends:

* ``causal``: no window (or the window covers the sequence) and one document: SDPA with ``is_causal``;
* ``dense``: a boolean [B, 1, L, L] mask (sliding window and/or packed documents) when L <= 2 * window;
* ``blocked``: L > 2 * window. Queries are cut into blocks of Bq positions; each block attends only to
  the W + Bq keys ending at its last query (Bq = W/4), so the work is O(L * 1.25W) instead of O(L^2),
  exactly the same function.
* ``flex`` (CUDA, selected by ``attn_implementation="flex"``): flex attention with a block mask.

Semantics match HF's sliding window: query i sees keys j with i - window < j <= i (and, when packed, only
keys of its own document).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=32)
def sliding_window_mask(length: int, window: int, device: str) -> torch.Tensor:
    """Boolean [L, L]: query i sees keys j with i - window < j <= i."""
    pos = torch.arange(length, device=device)
    diff = pos[:, None] - pos[None, :]
    return (diff >= 0) & (diff < window)


def query_block_size(window: int) -> int:
    """Queries per block: a quarter window (min 16) keeps the masked-out share of each block's keys small."""
    return min(window, max(16, window // 4))


@functools.lru_cache(maxsize=32)
def _block_positions(length: int, window: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [nb, Bq, W + Bq] window mask for blocked attention, and key positions [nb, W + Bq] (may be < 0)."""
    block = query_block_size(window)
    blocks = math.ceil(length / block)
    q_pos = torch.arange(blocks * block, device=device).view(blocks, block)
    k_pos = q_pos[:, :1] - window + torch.arange(window + block, device=device)[None, :]
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (diff >= 0) & (diff < window) & (k_pos[:, None, :] >= 0)
    return mask, k_pos


@dataclass
class AttentionPlan:
    kind: str  # "causal" | "dense" | "blocked" | "flex"
    length: int
    window: int | None = None
    mask: torch.Tensor | None = None  # dense: [B or 1, 1, L, L]; blocked: [B * nb, 1, W, 2W]
    block_mask: object | None = None  # flex
    _additive: dict | None = None  # dtype -> additive float mask, made once per forward, reused by every layer

    def sdpa_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as 0 / -inf in the query dtype: SDPA would otherwise convert a bool mask on every call."""
        if self._additive is None:
            self._additive = {}
        if dtype not in self._additive:
            zeros = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            self._additive[dtype] = zeros.masked_fill(~self.mask, float("-inf"))
        return self._additive[dtype]

    @classmethod
    def build(
        cls, length: int, window: int | None, device: torch.device, impl: str = "sdpa",
        segment_ids: torch.Tensor | None = None,
    ) -> AttentionPlan:
        if window is not None and window >= length:
            window = None
        if impl == "flex" and device.type == "cuda" and segment_ids is None:  # pragma: no cover - GPU only
            return cls("flex", length, window, block_mask=_flex_block_mask(length, window, str(device)))
        if impl == "eager":
            mask = sliding_window_mask(length, window or length, str(device))[None, None]
            if segment_ids is not None:
                mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1)
            return cls("eager", length, window, mask)
        if window is None and segment_ids is None:
            return cls("causal", length)
        if window is None or length <= 2 * window:
            mask = sliding_window_mask(length, window or length, str(device))[None, None]
            if segment_ids is not None:
                mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1)
            return cls("dense", length, window, mask)
        block, k_pos = _block_positions(length, window, str(device))
        if segment_ids is None:
            return cls("blocked", length, window, block.unsqueeze(1))
        bq = query_block_size(window)
        seg = F.pad(segment_ids, (window, block.shape[0] * bq - length), value=-1)
        seg_q = seg[:, window:].view(seg.shape[0], -1, bq)  # [B, nb, Bq]
        seg_k = seg.unfold(1, window + bq, bq)  # [B, nb, W + Bq]
        mask = block[None] & (seg_q[..., :, None] == seg_k[..., None, :])
        return cls("blocked", length, window, mask.flatten(0, 1).unsqueeze(1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """[B, H, L, D] queries; K/V may have fewer heads (GQA)."""
        gqa = k.shape[1] != q.shape[1]
        if self.kind == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=gqa)
        if self.kind == "dense":
            mask = self.sdpa_mask(q.dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
        if self.kind == "blocked":
            return _blocked(q, k, v, self.window, self.sdpa_mask(q.dtype), dropout_p, gqa)
        if self.kind == "eager":
            return _eager(q, k, v, self.mask)
        return _compiled_flex()(q, k, v, block_mask=self.block_mask, enable_gqa=gqa)  # pragma: no cover


def _blocked(q, k, v, window: int, mask: torch.Tensor, dropout_p: float, gqa: bool) -> torch.Tensor:
    """Each block of Bq queries attends to the W + Bq keys ending at its last query."""
    bsz, heads, length, dim = q.shape
    bq = query_block_size(window)
    blocks = math.ceil(length / bq)
    pad = blocks * bq - length
    qb = F.pad(q, (0, 0, 0, pad)).view(bsz, heads, blocks, bq, dim).transpose(1, 2)  # [B, nb, H, Bq, D]

    def key_blocks(x: torch.Tensor) -> torch.Tensor:  # [B, h, L, D] -> [B, nb, h, W + Bq, D]
        x = F.pad(x, (0, 0, window, pad))
        return x.unfold(2, window + bq, bq).permute(0, 2, 1, 4, 3)

    kb, vb = key_blocks(k), key_blocks(v)
    out = F.scaled_dot_product_attention(
        qb.flatten(0, 1), kb.flatten(0, 1), vb.flatten(0, 1),
        attn_mask=mask if mask.shape[0] == bsz * blocks else mask.repeat(bsz, 1, 1, 1),
        dropout_p=dropout_p, enable_gqa=gqa,
    )
    out = out.view(bsz, blocks, heads, bq, dim).transpose(1, 2).reshape(bsz, heads, blocks * bq, dim)
    return out[:, :, :length]


def _eager(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """Reference path (no fused kernel): plain softmax(QK^T)V, used to cross-check the fused ones."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


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


@functools.lru_cache(maxsize=32)
def _band(block: int, window: int, device: str) -> torch.Tensor:
    """Boolean [Bq, W - 1 + Bq]: query r of a block sees block keys r..r + W - 1 (see ``CachedWindowPlan``)."""
    r = torch.arange(block, device=device)[:, None]
    kk = torch.arange(window - 1 + block, device=device)[None, :]
    return (kk >= r) & (kk <= r + window - 1)


def cached_query_block(window: int) -> int:
    """Queries per block in streaming attention: 128 (W/4 for small windows) keeps the wasted share of each
    block's keys at Bq / (W - 1 + Bq) while the fused kernel still gets large tiles."""
    return max(1, min(128, window // 4 if window >= 64 else window))


@dataclass
class CachedWindowPlan:
    """Sliding-window attention for one step of a stream: queries are the last ``length`` rows of a key frame
    that starts with the ``window - 1`` keys carried over from the previous step (a sliding-window KV cache).

    Query block b (rows b*Bq .. b*Bq+Bq-1 of the step) needs exactly frame keys b*Bq .. b*Bq + W - 2 + Bq, so
    the frame is cut into overlapping windows of W - 1 + Bq keys (a strided view, no copy by us) and one fused
    SDPA call does every block: work O(L * (W - 1 + Bq)), never O(L^2). Within a block the window is a fixed
    band; packed documents add a segment-equality term, so documents never see each other.
    """

    window: int
    block: int
    length: int  # real queries in this step
    padded: int  # length rounded up to whole blocks
    mask: torch.Tensor  # bool [B * nb, 1, Bq, W - 1 + Bq]
    _additive: dict | None = None

    @classmethod
    def build(cls, segment_frame: torch.Tensor, length: int, window: int) -> CachedWindowPlan:
        """segment_frame [B, W - 1 + length]: segment id per frame position (cache first); -1 = empty slot."""
        block = cached_query_block(window)
        blocks = math.ceil(length / block)
        padded = blocks * block
        past = window - 1
        seg = F.pad(segment_frame, (0, padded - length), value=-1)  # [B, P + padded]
        seg_q = seg[:, past:].reshape(seg.shape[0], blocks, block)
        seg_k = seg.unfold(1, past + block, block)  # [B, nb, P + Bq]
        band = _band(block, window, str(segment_frame.device))
        mask = band & (seg_q[..., :, None] == seg_k[..., None, :])
        return cls(window, block, length, padded, mask.flatten(0, 1).unsqueeze(1))

    sdpa_mask = AttentionPlan.sdpa_mask  # the same per-dtype additive mask, made once per step

    def attend(self, q: torch.Tensor, k_frame: torch.Tensor, v_frame: torch.Tensor) -> torch.Tensor:
        """q [B, L, H, D]; k_frame, v_frame [B, W - 1 + L, Hkv, D] -> [B, L, H * D]."""
        bsz, length, heads, dim = q.shape
        pad = self.padded - length
        blocks, block, past = self.padded // self.block, self.block, self.window - 1
        if pad:
            q = F.pad(q, (0, 0, 0, 0, 0, pad))
            k_frame = F.pad(k_frame, (0, 0, 0, 0, 0, pad))
            v_frame = F.pad(v_frame, (0, 0, 0, 0, 0, pad))
        qb = q.view(bsz, blocks, block, heads, dim).permute(0, 1, 3, 2, 4).flatten(0, 1)  # [B*nb, H, Bq, D]

        def key_blocks(x: torch.Tensor) -> torch.Tensor:  # [B, P + L, h, D] -> [B * nb, h, P + Bq, D]
            return x.unfold(1, past + block, block).permute(0, 1, 2, 4, 3).flatten(0, 1)

        out = F.scaled_dot_product_attention(
            qb, key_blocks(k_frame), key_blocks(v_frame), attn_mask=self.sdpa_mask(q.dtype),
            enable_gqa=k_frame.shape[2] != heads,
        )
        out = out.view(bsz, blocks, heads, block, dim).permute(0, 1, 3, 2, 4).reshape(bsz, self.padded, heads * dim)
        return out[:, :length] if pad else out
