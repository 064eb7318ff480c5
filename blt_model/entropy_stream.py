"""Streaming entropies over many documents packed back to back: the engine around ``EntropyModel.step``.

Documents never attend across each other, so nothing is spent on padding. Each layer keeps its last
``sliding_window - 1`` keys/values from one step to the next (a sliding-window KV cache, ``KVCache``), so every
byte is computed exactly once and the result equals scoring each whole document on its own. ``EntropyStreamer``
keeps that state across calls, so a document can be fed in pieces; ``stream_entropies`` scores a whole stream,
optionally as several lanes side by side (to fill a GPU). RoPE positions restart at every document, exactly as
when a document is scored alone. A model without a sliding window (or an explicit ``context``) is scored by
re-reading a left context per span instead, the one path that works for full attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the model imports this module for KVCache; the engine needs the model only as a type
    from .entropy_model import EntropyModel


@dataclass
class KVCache:
    """Per layer, the post-RoPE keys and values of the last ``window - 1`` positions [B, W-1, Hkv, D], and their
    segment ids [B, W-1] (-1 = empty). Everything a later position can still attend to."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    segments: torch.Tensor


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
    re-reads that document's last ``receptive_field`` bytes, so the result stays exact. ``context=int``: each span
    re-reads ``context`` bytes before it instead (exact only for ``context >= receptive_field``).
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
    """Each span re-reads ``context`` tokens before it (exact for ``context >= receptive_field``); the path for
    models without a sliding window, whose attention a fixed-size cache cannot hold."""
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
