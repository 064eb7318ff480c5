"""Bits per byte: the one scoring implementation (``blt eval``, both trainers' validation, the lm-eval model).

A document is read as the model reads it in training: its bytes follow an EOS (every training document follows
the previous one's EOS) and end with an EOS that is a patch of its own. Its tokens are cut into windows of
``seq_len + 1`` tokens that overlap by one, exactly as the training loader cuts its stream (each window is seen
alone; positions 0 and 1 start patches; a window whose next token starts a patch gets HF's trailing zero-length
patch), so a long document costs the same context as in training and every target is counted once. Targets are
the document's bytes and its closing EOS, as in bytelatent's ``eval.py`` (``bpb = sum CE / ln 2 / targets``).

Sums are typed (``Totals``, ``EvalResult``) with ``__add__``; the cross-entropy sum is kept as an integer count
of 2^-32 nats, so partial results from any number of workers add up exactly and in any order. The entropy
model (no documents, no patches) sums its own windows into the same ``Totals`` (``score_batches``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from blt_model.entropy_model import EntropyModel
from blt_model.entropy_stream import stream_entropies
from blt_model.patching import BYTE_MODES, PatchingParams, patch_lengths_flat
from blt_model.tokens import BYTE_OFFSET, EOS_ID, IGNORE_INDEX
from pipeline.stream.blocks import Doc
from pipeline.stream.packing import doc_tokens, patch_lengths_np

DOC_START = EOS_ID  # the token in front of a document's first byte
_SCALE = 2**32  # nats are summed as integers of 2^-32 nats


@dataclass
class Totals:
    """Sums over documents of one source; ``a + b`` is exact."""

    nats_q32: int = 0  # cross-entropy sum in units of 2^-32 nats
    targets: int = 0  # predicted tokens: every byte and the EOS closing each document
    bytes: int = 0
    documents: int = 0
    patches: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.nats_q32 + other.nats_q32, self.targets + other.targets, self.bytes + other.bytes,
                      self.documents + other.documents, self.patches + other.patches)

    @property
    def nats(self) -> float:
        return self.nats_q32 / _SCALE

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.targets if self.targets else float("nan")

    @property
    def bytes_per_patch(self) -> float:
        return self.bytes / self.patches if self.patches else float("nan")

    def to_dict(self) -> dict:
        return {"bits_per_byte": self.bits_per_byte, "nats": self.nats, "documents": self.documents,
                "bytes": self.bytes, "targets": self.targets, "patches": self.patches,
                "bytes_per_patch": self.bytes_per_patch}


@torch.no_grad()
def score_batches(model: torch.nn.Module, batches: Iterable[Any],
                  batch_loss: Callable[[Any], tuple[torch.Tensor, int]]) -> Totals:
    """Totals of ``batches`` scored by ``batch_loss(batch) -> (mean loss, targets it averaged over)`` in eval
    mode (the model goes back to its mode after); each batch weighs what it holds."""
    was_training = model.training
    model.eval()
    total = Totals()
    try:
        for batch in batches:
            loss, count = batch_loss(batch)
            total = total + Totals(round(loss.item() * count * _SCALE), count)
    finally:
        model.train(was_training)
    return total


@dataclass
class EvalResult:
    """Totals per source; ``a + b`` merges sources by name (exact)."""

    sources: dict[str, Totals] = field(default_factory=dict)

    def __add__(self, other: EvalResult) -> EvalResult:
        merged = dict(self.sources)
        for name, totals in other.sources.items():
            merged[name] = merged.get(name, Totals()) + totals
        return EvalResult(merged)

    @property
    def overall(self) -> Totals:
        return sum(self.sources.values(), Totals())

    def to_dict(self) -> dict:
        return {"sources": {name: self.sources[name].to_dict() for name in sorted(self.sources)},
                "overall": self.overall.to_dict()}


@dataclass
class ByteSequence:
    """Tokens as the model reads them and where patches start; targets are tokens[first_target:]."""

    tokens: np.ndarray  # int64
    starts: np.ndarray  # bool, True where a patch starts
    first_target: int = 1


@dataclass
class Scored:
    nats: float  # cross-entropy summed over the sequence's targets
    targets: int
    greedy: bool  # every target is the model's argmax


def document_sequence(data: np.ndarray, lengths: np.ndarray) -> ByteSequence:
    """DOC_START, the document's bytes (patched by ``lengths``), EOS: the training loader's rule."""
    tokens, starts = doc_tokens(Doc("", (0, 0), data, lengths))
    return ByteSequence(np.concatenate([[DOC_START], tokens]), np.concatenate([[True], starts]))


def prefix_sequence(data: np.ndarray, lengths: np.ndarray, first_target_byte: int = 0) -> ByteSequence:
    """DOC_START and the bytes without a closing EOS; targets from byte ``first_target_byte`` on (lm-eval's
    continuation of a context)."""
    tokens = np.empty(len(data) + 1, dtype=np.int64)
    tokens[0] = DOC_START
    tokens[1:] = data.astype(np.int64) + BYTE_OFFSET
    starts = np.zeros(len(tokens), dtype=bool)
    starts[0] = True
    starts[1 + np.cumsum(lengths) - lengths] = True
    return ByteSequence(tokens, starts, 1 + first_target_byte)


@dataclass
class _Row:
    seq: int
    tokens: np.ndarray  # window inputs [n]
    labels: np.ndarray  # [n], IGNORE_INDEX where not a target
    starts: np.ndarray  # [n] patch starts (0 and 1 forced)
    next_start: bool


def _rows(index: int, seq: ByteSequence, seq_len: int) -> Iterator[_Row]:
    total = len(seq.tokens)
    for a in range(0, max(total - 1, 0), seq_len):
        b = min(a + seq_len + 1, total)
        labels = seq.tokens[a + 1 : b].copy()
        labels[: max(0, seq.first_target - (a + 1))] = IGNORE_INDEX
        if (labels == IGNORE_INDEX).all():
            continue
        starts = seq.starts[a : b - 1].copy()
        starts[:2] = True
        yield _Row(index, seq.tokens[a : b - 1], labels, starts, bool(seq.starts[b - 1]))


def _collate(rows: list[_Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded batch, every row with at least one pad token: the pad extends the row's last patch (or fills
    its trailing zero-length one), which no real byte's prediction reads. Without it, a row with fewer patches
    than the batch would have its last byte read a padding patch's global state (``patch_ids_from_lengths``
    clamps positions past ``sum(patch_lengths[1:])`` to the last patch), so its score would depend on the batch."""
    width = max(len(r.tokens) for r in rows) + 1
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    per_row = []
    for i, r in enumerate(rows):
        n = len(r.tokens)
        tokens[i, :n], labels[i, :n] = r.tokens, r.labels
        lengths = patch_lengths_np(r.starts[None], np.array([r.next_start]))[0].numpy()
        lengths = lengths.copy()
        lengths[-1] += width - n  # the trailing zero patch, or the last real patch
        per_row.append(lengths)
    patches = np.zeros((len(rows), max(len(p) for p in per_row)), dtype=np.int64)
    for i, p in enumerate(per_row):
        patches[i, : len(p)] = p
    return torch.from_numpy(tokens), torch.from_numpy(labels), torch.from_numpy(patches)


@torch.no_grad()
def score_sequences(model: torch.nn.Module, seqs: list[ByteSequence], seq_len: int, batch_size: int = 8,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    ) -> list[Scored]:
    """Cross-entropy of every sequence's targets, windows batched (longest first, to pad little)."""
    if seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = [row for i, s in enumerate(seqs) for row in _rows(i, s, seq_len)]
    rows.sort(key=lambda r: -len(r.tokens))
    nats = [0.0] * len(seqs)
    targets = [0] * len(seqs)
    greedy = [True] * len(seqs)
    try:
        for at in range(0, len(rows), batch_size):
            chunk = rows[at : at + batch_size]
            tokens, labels, patches = _collate(chunk)
            labels = labels.to(device)
            with autocast():
                logits = model(tokens.to(device), patches.to(device)).logits
            mask = labels != IGNORE_INDEX
            ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            row_nats = ce.double().sum(1).cpu().tolist()
            row_greedy = ((logits.argmax(-1) == labels) | ~mask).all(1).cpu().tolist()
            row_targets = mask.sum(1).cpu().tolist()
            for r, n, t, g in zip(chunk, row_nats, row_targets, row_greedy):
                nats[r.seq] += n
                targets[r.seq] += t
                greedy[r.seq] = greedy[r.seq] and g
    finally:
        model.train(was_training)
    return [Scored(n, t, g) for n, t, g in zip(nats, targets, greedy)]


@dataclass
class Document:
    """One document to score: its source, bytes and patch lengths (sum to len(data))."""

    source: str
    data: np.ndarray  # uint8
    lengths: np.ndarray


def score_documents(model: torch.nn.Module, docs: Iterable[Document], seq_len: int, batch_size: int = 8,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    group_bytes: int | None = None) -> EvalResult:
    """Per-source totals over whole documents (scored a group of about ``group_bytes`` at a time)."""
    limit = group_bytes or 4 * batch_size * seq_len
    result = EvalResult()
    group: list[Document] = []
    size = 0

    def flush() -> None:
        seqs = [document_sequence(d.data, d.lengths) for d in group]
        for d, s in zip(group, score_sequences(model, seqs, seq_len, batch_size, autocast)):
            totals = result.sources.setdefault(d.source, Totals())
            totals.nats_q32 += round(s.nats * _SCALE)
            totals.targets += s.targets
            totals.bytes += len(d.data)
            totals.documents += 1
            totals.patches += len(d.lengths)

    for doc in docs:
        if int(np.sum(doc.lengths)) != len(doc.data):
            raise ValueError(f"patch lengths sum to {int(np.sum(doc.lengths))}, not the {len(doc.data)} bytes")
        group.append(doc)
        size += len(doc.data) + 2
        if size >= limit:
            flush()
            group, size = [], 0
    if group:
        flush()
    return result


def as_stored(entropies: torch.Tensor) -> torch.Tensor:
    """Entropies rounded as dataset shards store them (float16), so patching on the fly equals a patch set."""
    return entropies.half().float()


@torch.no_grad()
def patch_on_the_fly(patcher: EntropyModel | None, params: PatchingParams, datas: list[np.ndarray],
                     ) -> list[np.ndarray]:
    """Patch lengths of whole documents by the preprocessing rule: entropies of each document's bytes alone
    (packed, exact), rounded as stored, then ``patch_lengths_flat`` with ``params``."""
    if not datas:
        return []
    sizes = np.array([len(d) for d in datas], dtype=np.int64)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)]))
    flat = np.concatenate(datas).astype(np.int64) if sizes.sum() else np.zeros(0, dtype=np.int64)
    entropies = None
    if params.needs_entropies and flat.size:
        if patcher is None:
            raise ValueError(f"patching mode {params.mode!r} needs an entropy model (--entropy-model)")
        device = next(patcher.parameters()).device
        doc_ids = torch.repeat_interleave(torch.arange(len(datas)), torch.from_numpy(sizes))
        dtype = torch.bfloat16 if device.type == "cuda" else None  # what preprocessing scores with
        entropies = as_stored(stream_entropies(patcher, torch.from_numpy(flat + BYTE_OFFSET), doc_ids,
                                               device=device, dtype=dtype).cpu())
    elif params.needs_entropies:
        entropies = torch.zeros(0)
    values = torch.from_numpy(flat) if params.mode in BYTE_MODES else None
    lengths, per_doc = patch_lengths_flat(params, offsets, entropies, values)
    cuts = np.cumsum(per_doc.numpy())[:-1]
    return [part.astype(np.int32) for part in np.split(lengths.numpy(), cuts)]
