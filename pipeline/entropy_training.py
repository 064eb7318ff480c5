"""Single-process training loop for the byte-level entropy model (the Ray Train job wraps the same step).

Documents are packed end to end into rows of ``seq_len + 1`` bytes; attention and the loss never cross a
document border, matching how ``stream_entropies`` scores documents at preprocessing time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blt_model.entropy_model import EntropyModel
from blt_model.tokens import IGNORE_INDEX, bytes_to_tokens


@dataclass
class EntropyTrainConfig:
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 200
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    seed: int = 0
    log_every: int = 25


def packed_rows(docs: list[bytes], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All documents end to end, cut into rows of seq_len + 1: (tokens [R, S+1], doc ids [R, S+1]; pad id -1)."""
    lengths = [len(d) for d in docs if d]
    if not lengths:
        raise ValueError("no non-empty documents to train on")
    stream = bytes_to_tokens(b"".join(docs))
    doc_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    row = seq_len + 1
    rows = math.ceil(stream.numel() / row)
    pad = rows * row - stream.numel()
    stream = F.pad(stream, (0, pad))
    doc_ids = F.pad(doc_ids, (0, pad), value=-1)
    return stream.view(rows, row), doc_ids.view(rows, row)


def batch_loss(model: EntropyModel, tokens: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """Next-byte cross entropy (nats/byte) inside documents only."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    same_doc = (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] >= 0)
    targets[~same_doc] = IGNORE_INDEX
    logits = model(inputs, doc_ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def train_entropy_model(
    model: EntropyModel,
    docs: Iterable[bytes],
    cfg: EntropyTrainConfig,
    on_log: Callable[[dict], None] | None = None,
    forward_model: torch.nn.Module | None = None,
    seed_offset: int = 0,
) -> list[dict]:
    """Train in place; returns the logged metrics (step, loss, bits_per_byte, bytes_per_s, lr).

    ``forward_model`` is what computes the loss (a DDP wrapper of ``model`` on Ray Train workers);
    ``seed_offset`` (the rank) gives every worker its own batch order.
    """
    forward_model = forward_model or model
    tokens, doc_ids = packed_rows(list(docs), cfg.seq_len)
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    model.train()
    history = []
    started, seen = time.perf_counter(), 0
    for step in range(cfg.steps):
        pick = torch.randint(0, tokens.shape[0], (cfg.batch_size,), generator=gen)
        loss = batch_loss(forward_model, tokens[pick], doc_ids[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        seen += cfg.batch_size * cfg.seq_len
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            record = {
                "step": step,
                "loss": loss.item(),
                "bits_per_byte": loss.item() / math.log(2),
                "bytes_per_s": seen / (time.perf_counter() - started),
                "lr": schedule.get_last_lr()[0],
            }
            history.append(record)
            if on_log:
                on_log(record)
    model.eval()
    return history
