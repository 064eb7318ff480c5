"""The byte-level entropy model (HF ``BltPatcher``): a small causal LM with sliding-window attention.

``entropies`` gives, for every position t, the natural-log entropy of the model's distribution over byte t+1.
``step`` is the cached forward the streaming engine (``entropy_stream``) drives: it continues a stream from a
sliding-window KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CachedWindowPlan
from .config import EntropyModelConfig
from .entropy_stream import KVCache
from .layers import RMSNorm, TransformerStack, rms_norm_fused, rope_at


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
