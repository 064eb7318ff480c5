"""Validation bits per byte: one evaluation for both trainers (and any scorer that wants the same number).

Bits per byte as bytelatent's ``eval.py`` defines it: summed next-byte cross-entropy (nats) / ln 2 / bytes scored.
Batches are weighted by the positions they score, so a source's short last batch counts for what it holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LossSum:
    """Summed loss (nats) over ``count`` scored positions; sums of several sources add up."""

    nats: float = 0.0
    count: int = 0

    def __add__(self, other: LossSum) -> LossSum:
        return LossSum(self.nats + other.nats, self.count + other.count)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / self.count / math.log(2) if self.count else float("nan")


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[Any],
             batch_loss: Callable[[Any], tuple[torch.Tensor, int]]) -> LossSum:
    """Score ``batches`` with ``batch_loss(batch) -> (mean loss, positions it averaged over)`` in eval mode (the
    model goes back to train mode after)."""
    model.eval()
    total = LossSum()
    try:
        for batch in batches:
            loss, count = batch_loss(batch)
            total = total + LossSum(loss.item() * count, count)
    finally:
        model.train()
    return total
