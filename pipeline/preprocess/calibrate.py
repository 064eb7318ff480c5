"""Pick the patching threshold that gives a target average patch size, from stored entropies.

Entropies are stored as float16, so a 65,536-bin histogram over their bit patterns is an exact summary of
every value: shards are summarised in parallel, the histograms add up, and the global-threshold mode is
solved exactly in one pass. Modes whose patch count is not a plain count of values above the threshold
(monotonic, threshold_add, threshold_or_rise, or any max_patch_length) use bisection over passes that count
patches. ``topk`` has no threshold: its budget is ``len // patch_size`` per document, set directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blt_model.patching import PatchingParams
from pipeline.dataset.documents import DocumentSpans
from pipeline.dataset.shards import flat_values, iter_batches
from pipeline.preprocess.patch_stage import patch_entropy_shard


@dataclass
class ShardEntropySummary:
    histogram: np.ndarray  # counts per float16 bit pattern of the scores that can start a patch
    forced_patches: int  # patches every threshold gives (first byte, second byte of each document)
    total_bytes: int

    def __add__(self, other: ShardEntropySummary) -> ShardEntropySummary:
        return ShardEntropySummary(
            self.histogram + other.histogram,
            self.forced_patches + other.forced_patches,
            self.total_bytes + other.total_bytes,
        )


def summarize_shard(entropy_url: str) -> ShardEntropySummary:
    """Histogram of the scores that may start a patch, over whole documents (a split document's parts joined).

    In document coordinates, score t (which decides whether byte t+1 starts a patch) is eligible for 1 <= t <=
    len - 2; bytes 0 and 1 always start patches. A row with ``part > 0`` continues the previous row's document,
    possibly across record batches, so the last score of a row stays pending until the next row is known.
    """
    histogram = np.zeros(1 << 16, dtype=np.int64)
    forced = total = 0
    spans = DocumentSpans()
    pending: tuple[int, int] | None = None  # (bit pattern, document position) of the previous row's last score
    for batch in iter_batches(entropy_url, "entropies"):
        values, offsets = flat_values(batch.column("entropies"))
        bits = values.view(np.uint16)
        lengths = np.diff(offsets)
        if batch.num_rows == 0:
            continue
        docs = spans.add(batch.column("part").to_numpy(zero_copy_only=False), lengths)
        continues = ~docs.starts
        if pending is not None and continues[0] and pending[1] >= 1:
            histogram[pending[0]] += 1
        # Document position of every byte: its row's position plus its offset in the row.
        row_start = offsets[:-1]
        positions = np.arange(len(values)) - np.repeat(row_start - docs.position, lengths)
        eligible = positions >= 1
        ends_doc = np.append(~continues[1:], False)  # the last row's document may go on in the next batch
        last_bytes = (offsets[1:] - 1)[(lengths > 0)]
        eligible[last_bytes] = False  # decided below: a row's last score points at the next row's first byte
        eligible_last = (~ends_doc & (lengths > 0))[: len(lengths) - 1]
        inner_last = (offsets[1:] - 1)[:-1][eligible_last]
        eligible[inner_last] = positions[inner_last] >= 1
        histogram += np.bincount(bits[eligible], minlength=1 << 16)
        forced += int(np.minimum(docs.closed_lengths, 2).sum())  # bytes 0 and 1 of each finished document
        pending = (int(bits[offsets[-1] - 1]), int(positions[offsets[-1] - 1])) if lengths[-1] > 0 else None
        total += int(lengths.sum())
    last = spans.finish()
    forced += min(last[0], 2) if last else 0
    return ShardEntropySummary(histogram, forced, total)


def exact_global_threshold(summary: ShardEntropySummary, target_avg_patch_size: float) -> tuple[float, float]:
    """(threshold, achieved average patch size) for mode 'entropy' without max_patch_length."""
    if summary.total_bytes == 0:
        raise ValueError("no stored entropies to calibrate on")
    wanted_above = summary.total_bytes / target_avg_patch_size - summary.forced_patches
    patterns = np.nonzero(summary.histogram)[0].astype(np.uint16)
    if not len(patterns):  # only forced patch starts (documents of <= 2 bytes): every threshold is the same
        return 0.0, summary.total_bytes / summary.forced_patches
    values = patterns.view(np.float16).astype(np.float64)
    order = np.argsort(values)
    values, counts = values[order], summary.histogram[patterns[order]]
    # Threshold = values[i] keeps exactly the scores strictly above it: counts[i+1:].
    above = np.concatenate([np.cumsum(counts[::-1])[::-1][1:], [0]])
    candidates = np.concatenate([[values[0] - 1.0], values])
    above_all = np.concatenate([[counts.sum()], above])
    best = int(np.argmin(np.abs(above_all - wanted_above)))
    patches = summary.forced_patches + above_all[best]
    return float(candidates[best]), summary.total_bytes / patches


def count_patches(entropy_url: str, params: PatchingParams) -> tuple[int, int]:
    """(bytes, patches) of one shard under ``params``; a patch that crosses a part border counts once."""
    nbytes = patches = 0
    for _batch, lengths, _per_row, continues in patch_entropy_shard(entropy_url, params):
        nbytes += int(lengths.sum())
        patches += len(lengths) - int(continues.sum())
    return nbytes, patches
