"""The byte-level entropy model (HF ``BltPatcher``): a small causal LM with sliding-window attention.

``entropies`` gives, for every position t, the natural-log entropy of the model's distribution over byte t+1.
``stream_entropies`` scores many documents at once, packed back to back (documents never attend across each
other, so nothing is spent on padding). Each layer keeps its last ``sliding_window - 1`` keys/values from one
step to the next (a sliding-window KV cache), so every byte is computed exactly once and the result equals
scoring each whole document on its own. ``EntropyStreamer`` keeps that state across calls, so a document can be
fed in pieces. RoPE positions restart at every document, exactly as when a document is scored alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CachedWindowPlan
from .config import EntropyModelConfig
from .layers import RMSNorm, TransformerStack, rms_norm_fused, rope_at


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last axis, in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class KVCache:
    """Per layer, the post-RoPE keys and values of the last ``window - 1`` positions [B, W-1, Hkv, D], and their
    segment ids [B, W-1] (-1 = empty). Everything a later position can still attend to."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    segments: torch.Tensor


class EntropyModel(nn.Module):
    def __init__(self, cfg: EntropyModelConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_implementation = attn_implementation
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.stack = TransformerStack(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def receptive_field(self) -> int:
        """How many earlier bytes can influence one prediction through the stacked sliding windows."""
        window = self.cfg.sliding_window
        return self.cfg.max_position_embeddings if window is None else self.cfg.num_hidden_layers * (window - 1)

    def forward(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L] -> logits [B, L, V]. ``segment_ids`` [B, L] marks packed documents (no cross-talk)."""
        x = self.embed_tokens(tokens)
        x = self.stack(x, self.cfg.sliding_window, self.attn_implementation, segment_ids)
        return self.lm_head(self.norm(x))

    @torch.inference_mode()
    def entropies(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        return entropy_from_logits(self(tokens, segment_ids))

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor, cache: KVCache):
        """One streaming step: tokens/segments/positions [B, L] continue the stream ``cache`` ends with.

        ``segments``: int ids, equal within a document, -1 for padding; ``positions``: index within the document
        (RoPE). Returns (entropies float32 [B, L], the cache for the next step). Needs a sliding window."""
        window = self.cfg.sliding_window
        past = window - 1
        compute = torch.get_autocast_dtype(tokens.device.type) if torch.is_autocast_enabled(tokens.device.type) \
            else self.embed_tokens.weight.dtype
        fuse = not torch.is_autocast_enabled(tokens.device.type)
        cos, sin = rope_at(positions, self.cfg.head_dim, self.cfg.rope_theta, torch.float32)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [B, L, 1, D/2] against [B, L, H, D/2]
        rot = torch.complex(cos, sin) if compute == torch.float32 else None
        plan = CachedWindowPlan.build(torch.cat((cache.segments, segments), dim=1), tokens.shape[1], window)
        x = self.embed_tokens(tokens)
        keys, values = [], []
        for layer, past_k, past_v in zip(self.stack.layers, cache.keys, cache.values):
            x, k_frame, v_frame = layer.forward_cached(x, (rot, cos, sin), plan, past_k, past_v, fuse)
            keys.append(k_frame[:, -past:].clone())
            values.append(v_frame[:, -past:].clone())
        logits = self.lm_head(rms_norm_fused(self.norm, x))
        seg_frame = torch.cat((cache.segments, segments), dim=1)[:, -past:].clone()
        return entropy_from_logits(logits), KVCache(keys, values, seg_frame)

    def empty_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """The state before any byte: ``window - 1`` empty slots per layer (segment -1: never attended)."""
        cfg = self.cfg
        shape = (batch, cfg.sliding_window - 1, cfg.num_key_value_heads, cfg.head_dim)
        zeros = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        return KVCache(zeros, [z.clone() for z in zeros],
                       torch.full(shape[:2], -1, dtype=torch.long, device=device))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _layout(doc_ids: torch.Tensor, prev_doc=None, prev_segment: int = -1, prev_position: int = -1):
    """Segment ids (a new one at every document change, counting on from ``prev_segment``) and positions within
    the document for a flat stream; a first document equal to ``prev_doc`` continues the previous one."""
    n = doc_ids.numel()
    idx = torch.arange(n)
    starts = torch.ones(n, dtype=torch.bool)
    if n > 1:
        starts[1:] = doc_ids[1:] != doc_ids[:-1]
    continues = prev_doc is not None and n > 0 and int(doc_ids[0]) == prev_doc
    if continues:
        starts[0] = False
    segments = prev_segment + torch.cumsum(starts.long(), 0)  # a continued first run keeps prev_segment
    start_of = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 0).values
    positions = idx - start_of
    if continues:
        first_run = segments == prev_segment
        positions[first_run] += prev_position + 1
    return segments, positions


def _compute_dtype(device: torch.device, dtype: torch.dtype | None, model: EntropyModel) -> torch.dtype:
    return dtype if dtype is not None else model.embed_tokens.weight.dtype


class EntropyStreamer:
    """Scores one stream of documents fed in pieces, carrying the KV cache from call to call.

    ``feed(tokens, doc_ids)`` returns the entropies of exactly the given bytes. If the first doc id of a call
    equals the last doc id of the previous call, that document continues (same positions, same context), so a
    document split across calls scores as if it were fed whole. ``reset()`` forgets the state. ``step`` tokens
    are scored per model call (memory and cache locality only: the result does not depend on it)."""

    def __init__(self, model: EntropyModel, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, step: int = 4096) -> None:
        if model.cfg.sliding_window is None:
            raise ValueError("streaming needs a sliding-window model")
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.step = step
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.empty_cache(1, self.device, _compute_dtype(self.device, self.dtype, self.model))
        self.last_doc = None
        self.last_segment = -1
        self.last_position = -1

    def feed(self, tokens: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
        """tokens, doc_ids: 1-D, same length (equal ids contiguous) -> float32 [N] entropies (on CPU)."""
        n = tokens.numel()
        out = torch.empty(n, dtype=torch.float32)
        if n == 0:
            return out
        segments, positions = _layout(doc_ids, self.last_doc, self.last_segment, self.last_position)
        tokens = tokens.long()
        for start in range(0, n, self.step):
            stop = min(n, start + self.step)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                        enabled=self.dtype is not None):
                ent, self.cache = self.model.step(
                    tokens[None, start:stop].to(self.device), segments[None, start:stop].to(self.device),
                    positions[None, start:stop].to(self.device), self.cache)
            out[start:stop] = ent[0].float().cpu()
        self.last_doc = int(doc_ids[-1])
        self.last_segment = int(segments[-1])
        self.last_position = int(positions[-1])
        return out


def stream_entropies(
    model: EntropyModel,
    tokens: torch.Tensor,
    doc_ids: torch.Tensor,
    span: int = 16384,
    context: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    lanes: int | None = None,
) -> torch.Tensor:
    """Entropies for a flat stream of documents laid end to end; float32 [N], equal to scoring each alone.

    tokens, doc_ids: 1-D, same length (one id per document, equal ids contiguous). ``context=None`` (default):
    exact streaming with a sliding-window KV cache, each byte computed once, ``span`` bytes per model call and
    lane. ``lanes`` cuts the stream into that many pieces scored side by side as one batch [lanes, span] (to fill
    a GPU; default 1 on CPU, enough for ~64K tokens per call on CUDA); a piece that starts inside a document first
    re-reads that document's last ``receptive_field`` bytes, so the result stays exact. ``context=int``: the old
    behaviour (each span re-reads ``context`` bytes before it; exact only for ``context >= receptive_field``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if context is not None or model.cfg.sliding_window is None:
        return _stream_reread(model, tokens, doc_ids, span, context, device, dtype)
    total = tokens.numel()
    if lanes is None:
        lanes = 1 if device.type == "cpu" else max(1, min((1 << 16) // span, total // (4 * span)))
    if lanes <= 1 or total == 0:
        return EntropyStreamer(model, device, dtype, span).feed(tokens, doc_ids)
    return _stream_lanes(model, tokens, doc_ids, span, lanes, device, dtype)


def _stream_lanes(model, tokens, doc_ids, span, lanes, device, dtype) -> torch.Tensor:
    """Several pieces of one stream as one batch; only the last steps of the shorter pieces are padding."""
    total = tokens.numel()
    segments, positions = _layout(doc_ids)
    cuts = [round(total * i / lanes) for i in range(lanes + 1)]
    warm = [max(c - int(positions[c]), c - model.receptive_field) if c < total else c for c in cuts[:-1]]
    lengths = [cuts[i + 1] - warm[i] for i in range(lanes)]
    steps = -(-max(lengths) // span)
    width = steps * span
    pad_tok = torch.zeros(lanes, width, dtype=torch.long)
    pad_seg = torch.full((lanes, width), -1, dtype=torch.long)
    pad_pos = torch.zeros(lanes, width, dtype=torch.long)
    for i in range(lanes):
        pad_tok[i, : lengths[i]] = tokens[warm[i] : cuts[i + 1]]
        pad_seg[i, : lengths[i]] = segments[warm[i] : cuts[i + 1]]
        pad_pos[i, : lengths[i]] = positions[warm[i] : cuts[i + 1]]
    ent = torch.empty(lanes, width, dtype=torch.float32)
    cache = model.empty_cache(lanes, device, _compute_dtype(device, dtype, model))
    for start in range(0, width, span):
        sl = slice(start, start + span)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            step_ent, cache = model.step(pad_tok[:, sl].to(device), pad_seg[:, sl].to(device),
                                         pad_pos[:, sl].to(device), cache)
        ent[:, sl] = step_ent.float().cpu()
    return torch.cat([ent[i, cuts[i] - warm[i] : lengths[i]] for i in range(lanes)])


def _stream_reread(model, tokens, doc_ids, span, context, device, dtype) -> torch.Tensor:
    """Each span re-reads ``context`` tokens before it (the pre-KV-cache behaviour, kept for comparison)."""
    context = model.receptive_field if context is None else context
    total = tokens.numel()
    out = torch.empty(total, dtype=torch.float32)
    for start in range(0, total, span):
        first = max(0, start - context)
        stop = min(total, start + span)
        batch_tokens = tokens[first:stop].long().to(device)[None]
        batch_docs = doc_ids[first:stop].long().to(device)[None]
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out[start:stop] = model.entropies(batch_tokens, batch_docs)[0, start - first :].float().cpu()
    return out
