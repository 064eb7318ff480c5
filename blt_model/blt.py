"""The Byte Latent Transformer: local encoder -> global latent transformer over patches -> local decoder.

Semantics are those of HF ``BltModel`` / ``BltForCausalLM`` (same weights give the same logits), including
its details: the encoder's patch queries are max-pooled byte states projected to ``cross_attn_k`` slots;
cross-attention outputs already carry the query residual and are added to the residual once more; the
decoder's byte t reads the global state of the patch before the one that holds byte t+1 (ids from
``patch_lengths[:, 1:]``). The forward pass has no per-sample Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionPlan
from .config import BltConfig, LocalDecoderConfig, LocalEncoderConfig
from .hashing import hash_ngram_ids
from .layers import CrossAttention, RMSNorm, TransformerStack
from .patching import patch_ids_from_lengths
from .tokens import IGNORE_INDEX


class LocalEncoder(nn.Module):
    def __init__(self, cfg: LocalEncoderConfig, window: int | None, impl: str) -> None:
        super().__init__()
        self.cfg, self.window, self.impl = cfg, window, impl
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.stack = TransformerStack(cfg)
        self.patch_embedding_projection = nn.Linear(cfg.hidden_size, cfg.hidden_size * cfg.cross_attn_k, bias=False)
        n_cross = cfg.num_hidden_layers if cfg.cross_attn_all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(cfg) for _ in range(n_cross))

    def forward(self, embeds: torch.Tensor, patch_ids: torch.Tensor, num_patches: int):
        """embeds [B, L, D] -> (byte states [B, L, D], patch states [B, P, k, D])."""
        x = F.dropout(embeds, self.cfg.dropout, self.training)
        rope = self.stack.rope(x.shape[1], x)
        plan = AttentionPlan.build(x.shape[1], self.window, x.device, self.impl)
        for layer in self.stack.layers:
            x = layer(x, rope, plan)
        # HF recomputes the patch states after every layer when cross_attn_all_layers is set but keeps only
        # the last result, so computing it once from the final states is the same function.
        queries = self._pool(x, patch_ids, num_patches)
        queries = self.patch_embedding_projection(queries).unflatten(-1, (self.cfg.cross_attn_k, -1))
        cross = self.cross_attn_layers[-1].patches_from_bytes(queries, x, patch_ids)
        return x, queries + cross

    @staticmethod
    def _pool(x: torch.Tensor, patch_ids: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Max over each patch's bytes; empty patches stay zero (HF ``patch_reduce``)."""
        bsz, _, dim = x.shape
        index = patch_ids.unsqueeze(-1).expand_as(x)
        out = x.new_zeros((bsz, num_patches, dim))
        return out.scatter_reduce(1, index, x, reduce="amax", include_self=False)


class GlobalTransformer(nn.Module):
    def __init__(self, cfg: BltConfig, impl: str) -> None:
        super().__init__()
        self.cfg, self.impl = cfg.global_config, impl
        in_size = cfg.encoder_cross_output_size
        self.token_embedding_projection = (
            nn.Linear(in_size, self.cfg.hidden_size, bias=False) if in_size is not None else nn.Identity()
        )
        self.stack = TransformerStack(self.cfg)

    def forward(self, patch_embeds: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.token_embedding_projection(patch_embeds), self.cfg.dropout, self.training)
        return self.stack(x, None, self.impl)


class LocalDecoder(nn.Module):
    def __init__(self, cfg: LocalDecoderConfig, window: int | None, impl: str) -> None:
        super().__init__()
        self.cfg, self.window, self.impl = cfg, window, impl
        self.stack = TransformerStack(cfg)
        self.patch_embedding_projection = nn.Linear(
            cfg.hidden_size_global, cfg.hidden_size * cfg.cross_attn_k, bias=False
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        n_cross = cfg.num_hidden_layers if cfg.cross_attn_all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(cfg) for _ in range(n_cross))

    def forward(self, byte_states: torch.Tensor, global_states: torch.Tensor, patch_ids: torch.Tensor):
        patches = self.patch_embedding_projection(global_states).unflatten(-1, (self.cfg.cross_attn_k, -1))
        x = F.dropout(byte_states, self.cfg.dropout, self.training)
        rope = self.stack.rope(x.shape[1], x)
        plan = AttentionPlan.build(x.shape[1], self.window, x.device, self.impl)
        for i, layer in enumerate(self.stack.layers):
            if i == 0 or self.cfg.cross_attn_all_layers:
                x = x + self.cross_attn_layers[i].bytes_from_patches(x, patches, patch_ids)
            x = layer(x, rope, plan)
        return self.norm(x)


@dataclass
class BltOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None

    @property
    def bits_per_byte(self) -> torch.Tensor | None:
        return None if self.loss is None else self.loss / math.log(2)


class ByteLatentTransformer(nn.Module):
    """BLT language model over byte tokens (ids = byte + 4), driven by precomputed patch lengths."""

    def __init__(self, cfg: BltConfig, *, sparse_hash_grad: bool = False) -> None:
        """``sparse_hash_grad``: the hash n-gram tables (most of a BLT's parameters at HF's 500k-row vocabulary)
        get sparse gradients holding only the rows a batch touched, for a lazy optimizer such as SparseAdam."""
        super().__init__()
        self.cfg = cfg
        self.sparse_hash_grad = sparse_hash_grad
        impl, window = cfg.attn_implementation, cfg.local_attention_window_len
        self.local_encoder = LocalEncoder(cfg.encoder_config, window, impl)
        self.global_transformer = GlobalTransformer(cfg, impl)
        self.local_decoder = LocalDecoder(cfg.decoder_config, window, impl)
        n_tables = cfg.encoder_hash_byte_group_nb_functions * len(cfg.encoder_hash_byte_group_size)
        self.encoder_hash_tok_embedding = nn.Embedding(
            cfg.encoder_hash_byte_group_vocab * n_tables, cfg.encoder_config.hidden_size
        )
        self.lm_head = nn.Linear(cfg.decoder_config.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated-normal init with std 1/sqrt(fan_in), as BLT does; norms start at one."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = module.in_features**-0.5
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
            elif isinstance(module, nn.Embedding):
                std = module.embedding_dim**-0.5
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        ids = hash_ngram_ids(
            tokens,
            cfg.encoder_hash_byte_group_size,
            cfg.encoder_hash_byte_group_nb_functions,
            cfg.encoder_hash_byte_group_vocab,
        )
        hashed = F.embedding_bag(
            ids.flatten(0, 1), self.encoder_hash_tok_embedding.weight, mode="sum", sparse=self.sparse_hash_grad
        ).view(*tokens.shape, -1)
        return self.local_encoder.embed_tokens(tokens) + hashed

    def forward(
        self, tokens: torch.Tensor, patch_lengths: torch.Tensor, labels: torch.Tensor | None = None
    ) -> BltOutput:
        """tokens [B, L]; patch_lengths [B, P] (right-padded with zeros); labels [B, L] (-100 = ignore)."""
        seq_len = tokens.shape[1]
        num_patches = patch_lengths.shape[1]
        encoder_ids = patch_ids_from_lengths(patch_lengths, seq_len)
        decoder_ids = patch_ids_from_lengths(patch_lengths[:, 1:], seq_len)
        byte_states, patch_states = self.local_encoder(self.embed(tokens), encoder_ids, num_patches)
        global_states = self.global_transformer(patch_states.flatten(2))
        hidden = self.local_decoder(byte_states, global_states, decoder_ids)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return BltOutput(logits=logits, loss=loss)
