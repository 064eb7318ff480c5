"""The byte-level entropy model (HF ``BltPatcher``): a small causal LM with sliding-window attention.

``entropies`` gives, for every position t, the natural-log entropy of the model's distribution over byte t+1.
``stream_entropies`` scores many documents at once: it packs them back to back into fixed rows (documents
never attend across each other) and gives every row the preceding bytes of its document as left context,
so the result equals scoring each whole document on its own (exactly, once the context covers the receptive
field ``num_hidden_layers * (sliding_window - 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import packed_documents_mask
from .config import EntropyModelConfig
from .layers import RMSNorm, TransformerStack


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last axis, in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


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
        mask = None if segment_ids is None else packed_documents_mask(segment_ids, self.cfg.sliding_window)
        x = self.stack(x, self.cfg.sliding_window, self.attn_implementation, mask)
        return self.lm_head(self.norm(x))

    @torch.inference_mode()
    def entropies(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        return entropy_from_logits(self(tokens, segment_ids))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


@dataclass(frozen=True)
class PackingPlan:
    """Rows of ``context + window`` positions into one flat stream; -1 marks padding."""

    index: torch.Tensor  # [R, context + window] positions into the stream, -1 = padding
    window: int
    context: int


def plan_packed_rows(total: int, window: int, context: int) -> PackingPlan:
    """Cut a stream of ``total`` tokens into rows; row r predicts stream[r*window:(r+1)*window]."""
    rows = max(1, -(-total // window))
    starts = torch.arange(rows) * window - context
    index = starts[:, None] + torch.arange(context + window)[None, :]
    index = torch.where((index >= 0) & (index < total), index, torch.full_like(index, -1))
    return PackingPlan(index=index, window=window, context=context)


def stream_entropies(
    model: EntropyModel,
    tokens: torch.Tensor,
    doc_ids: torch.Tensor,
    window: int = 2048,
    context: int | None = None,
    rows_per_batch: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Entropies for a flat stream of documents laid end to end.

    tokens, doc_ids: 1-D, same length; doc_ids nondecreasing (one id per document). Returns float32 [N].
    context defaults to the model's receptive field, which makes the result exact.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    context = model.receptive_field if context is None else context
    total = tokens.numel()
    if total == 0:
        return torch.zeros(0, dtype=torch.float32)
    plan = plan_packed_rows(total, window, context)
    out = torch.empty(total, dtype=torch.float32)
    padded_tokens = torch.cat([tokens.long(), tokens.new_zeros(1)])
    padded_docs = torch.cat([doc_ids.long(), doc_ids.new_full((1,), -1)])
    for first in range(0, plan.index.shape[0], rows_per_batch):
        index = plan.index[first : first + rows_per_batch]
        batch_tokens = padded_tokens[index].to(device)
        batch_docs = padded_docs[index].to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            ent = model.entropies(batch_tokens, batch_docs)[:, context:].float().cpu()
        targets = index[:, context:]
        valid = targets >= 0
        out[targets[valid]] = ent[valid]
    return out
