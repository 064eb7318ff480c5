"""Typed partial statistics: what one shard contributes, and ``+`` to add shards into sources and a dataset.

Only sums, histograms and small samples, so any grouping of shards adds up exactly (``sum(parts, start)``).
Long documents are stored as consecutive rows with the same ``doc_id`` and ``part`` = 0, 1, 2, ...: they count
as one document whose length is the sum of its parts, and a patch row flagged ``continues`` has its first patch
joined to the previous row's last patch, so patch lengths are those of the whole document.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.dataset.documents import DocumentSpans
from pipeline.dataset.shards import binary_values, continues_column, flat_values, iter_batches

ENTROPY_BINS = np.round(np.arange(0.0, 6.01, 0.1), 2)  # nats; a 260-way softmax stays below ln 260 = 5.56
PATCH_LENGTH_MAX = 64  # the last bin counts patches of this length or longer
DOC_LENGTH_BINS = 2.0 ** np.arange(0, 25)  # bytes, powers of two
BYTE_CLASSES = ("letters", "digits", "whitespace", "punctuation", "utf8_multibyte", "other")
LENGTH_SAMPLE = 64  # per shard: all document lengths up to this many, else this many quantiles
CANDIDATE_QUANTILES = np.linspace(0.1, 0.9, 9)  # example candidates per shard, by document length


def _class_table() -> np.ndarray:
    values = np.arange(256)
    out = np.full(256, 5, dtype=np.int64)
    letters = ((values >= 65) & (values <= 90)) | ((values >= 97) & (values <= 122))
    digits = (values >= 48) & (values <= 57)
    space = np.isin(values, (9, 10, 11, 12, 13, 32))
    punct = (values >= 33) & (values <= 126) & ~letters & ~digits
    out[letters], out[digits], out[space], out[punct], out[values >= 128] = 0, 1, 2, 3, 4
    return out


CLASS_OF_BYTE = _class_table()  # byte value -> index into BYTE_CLASSES


def _f16_tables() -> tuple[np.ndarray, np.ndarray]:
    """Every float16 bit pattern -> (its value, 0 for NaN/inf; its entropy histogram bin)."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    finite = np.isfinite(values)
    bins = np.zeros(1 << 16, dtype=np.int64)
    bins[finite] = np.clip((values[finite] * 10).astype(np.int64), 0, len(ENTROPY_BINS) - 1)
    return np.where(finite, values, 0).astype(np.float64), bins


F16_VALUE, F16_BIN = _f16_tables()


@dataclass
class ShardTask:
    unit_key: str
    entropy_url: str
    patch_urls: dict  # patch set key -> shard url


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.int64)


@dataclass
class PatchSetCounts:
    """One patch set over some shards: its patches, their length histogram, and the shards' bytes and docs."""

    patches: int = 0
    length_hist: np.ndarray = field(default_factory=lambda: _zeros(PATCH_LENGTH_MAX + 1))
    bytes: int = 0
    docs: int = 0
    shards: int = 0

    def __add__(self, other: PatchSetCounts) -> PatchSetCounts:
        return PatchSetCounts(self.patches + other.patches, self.length_hist + other.length_hist,
                              self.bytes + other.bytes, self.docs + other.docs, self.shards + other.shards)

    def summary(self) -> dict:
        return {"shards": self.shards, "bytes": self.bytes, "patches": self.patches,
                "avg_patch_size": self.bytes / self.patches if self.patches else 0.0,
                "patches_per_doc": self.patches / max(1, self.docs),
                "length_hist": self.length_hist.astype(np.int64).tolist()}


@dataclass(frozen=True)
class Candidate:
    """A document that may become its source's example: where it starts and how long it is."""

    unit_key: str
    row: int
    length: int


@dataclass
class PartialStats:
    """Statistics of a set of shards, as sums: ``a + b`` is the statistics of both sets."""

    shards: int = 0
    docs: int = 0
    bytes: int = 0
    entropy_sum: float = 0.0
    forced: int = 0  # patch starts every rule makes (bytes 0 and 1 of each document)
    class_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(BYTE_CLASSES)))
    class_count: np.ndarray = field(default_factory=lambda: _zeros(len(BYTE_CLASSES)))
    class_hist: np.ndarray = field(default_factory=lambda: _zeros(len(BYTE_CLASSES), len(ENTROPY_BINS)))
    doc_length_hist: np.ndarray = field(default_factory=lambda: _zeros(len(DOC_LENGTH_BINS)))
    f16_patterns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))  # sparse float16 histogram
    f16_counts: np.ndarray = field(default_factory=lambda: _zeros(0))  # of the scores that may start a patch
    patch_sets: dict[str, PatchSetCounts] = field(default_factory=dict)
    length_samples: list[tuple[list[float], int]] = field(default_factory=list)  # (sample, docs) per shard
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def entropy_hist(self) -> np.ndarray:
        return self.class_hist.sum(axis=0)

    @property
    def f16_hist(self) -> np.ndarray:
        dense = _zeros(1 << 16)
        dense[self.f16_patterns] += self.f16_counts
        return dense

    def __add__(self, other: PartialStats) -> PartialStats:
        dense = self.f16_hist + other.f16_hist
        patch_sets = dict(self.patch_sets)
        for key, counts in other.patch_sets.items():
            patch_sets[key] = patch_sets[key] + counts if key in patch_sets else counts
        return PartialStats(
            self.shards + other.shards, self.docs + other.docs, self.bytes + other.bytes,
            self.entropy_sum + other.entropy_sum, self.forced + other.forced,
            self.class_sum + other.class_sum, self.class_count + other.class_count,
            self.class_hist + other.class_hist, self.doc_length_hist + other.doc_length_hist,
            np.nonzero(dense)[0].astype(np.uint16), dense[dense > 0], patch_sets,
            self.length_samples + other.length_samples, self.candidates + other.candidates)


class _Documents:
    """Whole-document lengths and first rows of one shard (``DocumentSpans`` joins the parts)."""

    def __init__(self) -> None:
        self.spans = DocumentSpans()
        self.lengths: list[np.ndarray] = []
        self.first_rows: list[np.ndarray] = []

    def add(self, row_lengths: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """Take one batch's rows; returns which of them start a document."""
        docs = self.spans.add(parts, row_lengths)
        self.lengths.append(docs.closed_lengths)
        self.first_rows.append(docs.closed_first_rows)
        return docs.starts

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Close the open document; (lengths, first row of each document)."""
        last = self.spans.finish()
        if last is not None:
            self.lengths.append(np.array([last[0]]))
            self.first_rows.append(np.array([last[1]]))
        if not self.lengths:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.lengths).astype(np.int64), np.concatenate(self.first_rows).astype(np.int64)


class _PatchLengths:
    """Histogram and count of patch lengths, joining a row's first patch to the previous row's last one when
    the row ``continues`` it (the parts of one long document), across record batches."""

    def __init__(self) -> None:
        self.hist = np.zeros(PATCH_LENGTH_MAX + 1, dtype=np.int64)
        self.patches = 0
        self.pending: int | None = None  # last (possibly still growing) patch

    def add(self, lengths: np.ndarray, offsets: np.ndarray, continues: np.ndarray | None) -> None:
        if not len(lengths):
            return
        starts = np.ones(len(lengths), dtype=bool)
        if continues is not None:
            counts = np.diff(offsets)
            rows = np.nonzero(continues & (counts > 0))[0]
            starts[offsets[rows]] = False
        if self.pending is not None:
            lengths = np.concatenate([[self.pending], lengths])
            starts = np.concatenate([[True], starts])
        elif not starts[0]:
            starts[0] = True  # nothing before this row to continue
        merged = np.add.reduceat(lengths.astype(np.int64), np.nonzero(starts)[0])
        self._count(merged[:-1])
        self.pending = int(merged[-1])

    def finish(self) -> None:
        if self.pending is not None:
            self._count(np.array([self.pending]))
            self.pending = None

    def _count(self, merged: np.ndarray) -> None:
        self.hist += np.bincount(np.minimum(merged, PATCH_LENGTH_MAX), minlength=PATCH_LENGTH_MAX + 1)
        self.patches += len(merged)


def _doc_length_hist(lengths: np.ndarray) -> np.ndarray:
    return np.bincount(np.clip(np.log2(np.maximum(lengths, 1)).astype(np.int64), 0, len(DOC_LENGTH_BINS) - 1),
                       minlength=len(DOC_LENGTH_BINS))


@dataclass
class _EntropyScan:
    """What one pass over an entropy shard counts."""

    class_f16: np.ndarray  # one count per (byte class, float16 pattern of the score)
    f16_hist: np.ndarray  # float16 patterns of the scores that can start a patch in mode 'entropy'
    doc_lengths: np.ndarray
    first_rows: np.ndarray
    bytes: int


def _scan_entropies(url: str) -> _EntropyScan:
    class_f16 = _zeros(len(BYTE_CLASSES) << 16)
    f16_hist = _zeros(1 << 16)
    documents = _Documents()
    nbytes = 0
    held: int | None = None  # the previous batch's final score: counted only if the next row continues it
    for batch in iter_batches(url, "entropies"):
        if not batch.num_rows:
            continue
        ent, offsets = flat_values(batch.column("entropies"))
        raw, _ = binary_values(batch.column("bytes"))
        lengths = np.diff(offsets)
        starts = documents.add(lengths, batch.column("part").to_numpy(zero_copy_only=False))
        class_f16 += np.bincount((CLASS_OF_BYTE[raw] << 16) | ent.view(np.uint16), minlength=len(BYTE_CLASSES) << 16)
        # Scores that can start a patch in mode 'entropy' (for the threshold sweep): not a document's first score
        # (bytes 0 and 1 always start patches) and not its last (it points past the document). A row continuing
        # its document: its first score is eligible, and the previous row keeps its last one.
        if held is not None and not starts[0]:
            f16_hist[held] += 1
        held = None
        nonempty = lengths > 0
        eligible = np.ones(len(ent), dtype=bool)
        eligible[offsets[:-1][starts & nonempty]] = False
        continued = np.concatenate([~starts[1:], [False]])
        eligible[(offsets[1:] - 1)[nonempty & ~continued]] = False
        f16_hist += np.bincount(ent[eligible].view(np.uint16), minlength=1 << 16)
        if nonempty[-1]:
            held = int(ent[-1:].view(np.uint16)[0])
        nbytes += int(lengths.sum())
    doc_lengths, first_rows = documents.finish()
    return _EntropyScan(class_f16, f16_hist, doc_lengths, first_rows, nbytes)


def _count_patches(url: str) -> tuple[int, np.ndarray]:
    counter = _PatchLengths()
    for batch in iter_batches(url, "patches"):
        lengths, offsets = flat_values(batch.column("patch_lengths"))
        counter.add(lengths, offsets, continues_column(batch))
    counter.finish()
    return counter.patches, counter.hist


def _length_sample(doc_lengths: np.ndarray) -> list[float]:
    if len(doc_lengths) <= LENGTH_SAMPLE:
        return [float(x) for x in np.sort(doc_lengths)]
    return [float(x) for x in np.quantile(doc_lengths, (np.arange(LENGTH_SAMPLE) + 0.5) / LENGTH_SAMPLE)]


def _candidates(unit_key: str, doc_lengths: np.ndarray, first_rows: np.ndarray) -> list[Candidate]:
    if not len(doc_lengths):
        return []
    order = np.argsort(doc_lengths, kind="stable")
    picks = sorted({int(order[int(q * (len(order) - 1) + 0.5)]) for q in CANDIDATE_QUANTILES})
    return [Candidate(unit_key, int(first_rows[i]), int(doc_lengths[i])) for i in picks]


def shard_stats(task: ShardTask) -> PartialStats:
    """Partial statistics of one shard."""
    scan = _scan_entropies(task.entropy_url)
    by_class = scan.class_f16.reshape(len(BYTE_CLASSES), 1 << 16)
    class_sum = by_class @ F16_VALUE
    class_hist = np.stack([np.bincount(F16_BIN, weights=row, minlength=len(ENTROPY_BINS)) for row in by_class])
    docs, lengths = len(scan.doc_lengths), scan.doc_lengths
    patch_sets = {}
    for key, url in task.patch_urls.items():
        patches, hist = _count_patches(url)
        patch_sets[key] = PatchSetCounts(patches, hist, scan.bytes, docs, 1)
    return PartialStats(
        shards=1, docs=docs, bytes=scan.bytes, entropy_sum=float(class_sum.sum()),
        forced=int((lengths >= 1).sum() + (lengths >= 2).sum()), class_sum=class_sum,
        class_count=by_class.sum(axis=1), class_hist=class_hist.astype(np.int64),
        doc_length_hist=_doc_length_hist(lengths), f16_patterns=np.nonzero(scan.f16_hist)[0].astype(np.uint16),
        f16_counts=scan.f16_hist[scan.f16_hist > 0], patch_sets=patch_sets,
        length_samples=[(_length_sample(lengths), docs)],
        candidates=_candidates(task.unit_key, lengths, scan.first_rows))


def total(parts: list[PartialStats]) -> PartialStats:
    """The sum of ``parts`` (in their order), or empty statistics."""
    out = PartialStats()
    for part in parts:
        out = out + part
    return out


__all__ = ["PartialStats", "PatchSetCounts", "Candidate", "ShardTask", "shard_stats", "total"]
