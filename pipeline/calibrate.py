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

from .patch_stage import patches_for_batch
from .shards import flat_values, iter_batches


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
    histogram = np.zeros(1 << 16, dtype=np.int64)
    forced = total = 0
    for batch in iter_batches(entropy_url, "entropies"):
        values, offsets = flat_values(batch.column("entropies"))
        lengths = np.diff(offsets)
        eligible = np.ones(len(values), dtype=bool)
        eligible[offsets[:-1][lengths > 0]] = False  # first score of a document is ignored
        eligible[(offsets[1:] - 1)[lengths > 0]] = False  # last score points past the document
        histogram += np.bincount(values[eligible].view(np.uint16), minlength=1 << 16)
        forced += int((lengths >= 1).sum() + (lengths >= 2).sum())
        total += int(lengths.sum())
    return ShardEntropySummary(histogram, forced, total)


def exact_global_threshold(summary: ShardEntropySummary, target_avg_patch_size: float) -> tuple[float, float]:
    """(threshold, achieved average patch size) for mode 'entropy' without max_patch_length."""
    if summary.total_bytes == 0:
        raise ValueError("no stored entropies to calibrate on")
    wanted_above = summary.total_bytes / target_avg_patch_size - summary.forced_patches
    patterns = np.nonzero(summary.histogram)[0].astype(np.uint16)
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
    """(bytes, patches) of one shard under ``params``."""
    nbytes = patches = 0
    for batch in iter_batches(entropy_url, "entropies"):
        lengths, _ = patches_for_batch(batch, params)
        nbytes += int(lengths.sum())
        patches += len(lengths)
    return nbytes, patches
