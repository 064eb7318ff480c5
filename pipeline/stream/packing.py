"""Packing documents into training windows: a document's tokens (bytes + EOS, a patch of its own), the packer
that lays documents end to end and cuts overlapping windows, and the collation of windows into a ``Batch``.

Pure numpy/torch: the stream (``pipeline.stream.loader``) and the scorer (``training.scoring``) share it, so
training windows and evaluation windows are cut by one rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from blt_model.tokens import BYTE_OFFSET, EOS_ID
from pipeline.stream.blocks import Doc
from pipeline.stream.state import CarryRef


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B, S]
    patch_lengths: torch.Tensor  # [B, P]
    next_starts: torch.Tensor  # [B] bool: the byte after the last input starts a patch (trailing 0 patch added)
    doc_ids: list[str]  # documents that started in this batch (for audits/tests)
    doc_sources: list[str] = field(default_factory=list)  # their source names (parallel to doc_ids)
    doc_epochs: list[int] = field(default_factory=list)  # the source epoch each came from

    @property
    def num_patches(self) -> int:
        return int((self.patch_lengths > 0).sum())

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (what torchdata's ``PinMemory`` calls)."""
        return dataclasses.replace(self, tokens=self.tokens.pin_memory(), labels=self.labels.pin_memory(),
                                   patch_lengths=self.patch_lengths.pin_memory(),
                                   next_starts=self.next_starts.pin_memory())


def doc_tokens(doc: Doc) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64, patch-start flags) of a document followed by its EOS (a patch of its own)."""
    n = len(doc.data)
    tokens = np.empty(n + 1, dtype=np.int64)
    tokens[:-1] = doc.data
    tokens[:-1] += BYTE_OFFSET
    tokens[-1] = EOS_ID
    starts = np.zeros(n + 1, dtype=bool)
    starts[np.cumsum(doc.lengths) - doc.lengths] = True
    starts[-1] = True
    return tokens, starts


class Packer:
    """Documents end to end, cut into overlapping windows; remembers which documents the unread tail holds."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.size = 0
        self.segments: list[list] = []  # [doc, tokens left] for every document with unread tokens

    def push(self, ref: tuple, tokens: np.ndarray, starts: np.ndarray) -> None:
        self.parts.append((tokens, starts))
        self.size += len(tokens)
        self.segments.append([ref, len(tokens)])

    def window(self, length: int):
        if self.size < length:
            return None
        if len(self.parts) > 1:
            self.parts = [(np.concatenate([p[0] for p in self.parts]), np.concatenate([p[1] for p in self.parts]))]
        tokens, starts = self.parts[0]
        row = (tokens[:length], starts[:length])
        advance = length - 1  # overlap by one: the last label is the next window's first input
        self.parts = [(tokens[advance:], starts[advance:])]
        self.size -= advance
        while advance:
            take = min(advance, self.segments[0][1])
            self.segments[0][1] -= take
            advance -= take
            if self.segments[0][1] == 0:
                self.segments.pop(0)
        return row

    def carry(self, doc_lengths: dict) -> list[CarryRef]:
        """Every document still in the tail, with the offset of its first unread token."""
        return [CarryRef(*ref, doc_lengths[ref] - left) for ref, left in self.segments]


def patch_lengths_np(starts: np.ndarray, next_starts: np.ndarray) -> torch.Tensor:
    """``blt_model.patching.lengths_from_start_mask`` for full rows whose position 0 starts a patch, in numpy
    (the torch version's bool reductions dominated the loader's time on CPU)."""
    batch, length = starts.shape
    rows = []
    for b in range(batch):
        first = np.flatnonzero(starts[b])
        lengths = np.diff(first, append=length)
        rows.append(np.append(lengths, 0) if next_starts[b] else lengths)
    out = np.zeros((batch, max(len(r) for r in rows)), dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return torch.from_numpy(out)


def collate(rows, docs: list[tuple[str, str, int]]) -> Batch:
    tokens = np.stack([r[0] for r in rows])
    starts = np.stack([r[1] for r in rows])
    window_starts = starts[:, :-1].copy()
    window_starts[:, :2] = True
    next_starts = starts[:, -1].copy()
    lengths = patch_lengths_np(window_starts, next_starts)
    return Batch(torch.from_numpy(np.ascontiguousarray(tokens[:, :-1])),
                 torch.from_numpy(np.ascontiguousarray(tokens[:, 1:])), lengths, torch.from_numpy(next_starts),
                 [d[0] for d in docs], [d[1] for d in docs], [d[2] for d in docs])
