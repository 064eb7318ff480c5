"""The byte-level entropy model (HF ``BltPatcher``): a small causal LM with sliding-window attention.

``entropies`` gives, for every position t, the natural-log entropy of the model's distribution over byte t+1.
``stream_entropies`` scores many documents at once: it packs them back to back into long spans (documents
never attend across each other; sliding-window attention is block-sparse, so a span costs O(span * window))
and carries the receptive field ``num_hidden_layers * (sliding_window - 1)`` across span borders, so the
result equals scoring each whole document on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
        x = self.stack(x, self.cfg.sliding_window, self.attn_implementation, segment_ids)
        return self.lm_head(self.norm(x))

    @torch.inference_mode()
    def entropies(self, tokens: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        return entropy_from_logits(self(tokens, segment_ids))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def stream_entropies(
    model: EntropyModel,
    tokens: torch.Tensor,
    doc_ids: torch.Tensor,
    span: int = 16384,
    context: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Entropies for a flat stream of documents laid end to end.

    tokens, doc_ids: 1-D, same length (one id per document, equal ids contiguous). The stream is scored in
    spans of ``span`` tokens as one packed sequence; each span after the first re-reads ``context`` tokens
    before it, which defaults to the receptive field and then makes the result exact. Returns float32 [N].
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
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
