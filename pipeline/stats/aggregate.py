"""Dataset statistics, aggregated with Ray: one task per shard returns small partial sums, the driver adds them.

What comes out (``stats.json`` next to the manifest, rendered by ``dashboard.py``):
totals (docs, bytes, patches and average patch size per patch set, skips by reason); per source (inputs grouped
by directory, file or user patterns): bytes, documents, mean entropy, average patch size per patch set and
histograms; histograms of patch length, per-byte entropy and document length; entropy by byte class; a
threshold sweep (average patch size and patches per document vs threshold, exact, from the float16 entropy
histogram) with every stored patch set marked; a per-shard table; one representative example document per
source (near the source's median document length) with its patches and entropies.

Long documents are stored as consecutive rows with the same ``doc_id`` and ``part`` = 0, 1, 2, ...: they count
as one document whose length is the sum of its parts, and a patch row flagged ``continues`` has its first patch
joined to the previous row's last patch, so patch lengths are those of the whole document.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass

import numpy as np

from pipeline.dataset.layout import DASHBOARD_NAME, STATS_NAME, input_url_of
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import binary_values, flat_values, iter_batches
from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger, progress
from pipeline.io.storage import join, write_bytes_atomic
from pipeline.stats.partial import (
    BYTE_CLASSES,
    DOC_LENGTH_BINS,
    ENTROPY_BINS,
    PartialStats,
    PatchSetCounts,
    ShardTask,
    shard_stats,
    total,
)

log = get_logger("stats")  # users see [blt.stats], not the module name

SWEEP = np.round(np.arange(0.0, 5.61, 0.05), 2)
EXAMPLE_BYTES = 1500


@dataclass(frozen=True)
class SourceGrouping:
    """How input objects are grouped into sources for the per-source view.

    ``patterns``: ``(name, glob or prefix)`` pairs tried in order (a pattern without ``* ? [`` is a prefix);
    inputs that match none are grouped by ``group_by``: ``dir`` (parent "directory" of the URL) or ``file``.
    """

    patterns: tuple[tuple[str, str], ...] = ()
    group_by: str = "dir"

    def __post_init__(self) -> None:
        if self.group_by not in ("dir", "file"):
            raise ValueError(f"group_by must be 'dir' or 'file', not {self.group_by!r}")

    @classmethod
    def parse(cls, patterns: list[str] | None, group_by: str = "dir") -> SourceGrouping:
        """``NAME=GLOB`` or a bare ``GLOB`` (named by itself), as given on the command line."""
        pairs = []
        for item in patterns or ():
            name, sep, pattern = item.partition("=")
            pairs.append((name, pattern) if sep and name and "/" not in name else (item, item))
        return cls(tuple(pairs), group_by)

    def source_of(self, unit_key: str) -> str:
        url = input_url_of(unit_key)
        for name, pattern in self.patterns:
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(url, pattern):
                return name
            if not any(ch in pattern for ch in "*?[") and url.startswith(pattern):
                return name
        if self.group_by == "file":
            return url
        head, sep, _ = url.rpartition("/")
        return head + sep if sep else "."

    def to_dict(self) -> dict:
        return {"patterns": [list(p) for p in self.patterns], "group_by": self.group_by}


@dataclass
class ExampleTask:
    entropy_url: str
    patch_urls: dict
    row: int  # row index in the entropy shard of the document's first part


def load_example(task: ExampleTask) -> dict:
    """The first ``EXAMPLE_BYTES`` of one document (its first part): bytes, entropies, patches per set."""
    row = task.row
    example = None
    for batch in iter_batches(task.entropy_url, "entropies"):
        if row >= batch.num_rows:
            row -= batch.num_rows
            continue
        ent, offsets = flat_values(batch.column("entropies"))
        raw, _ = binary_values(batch.column("bytes"))
        start = int(offsets[row])
        stop = start + min(EXAMPLE_BYTES, int(offsets[row + 1]) - start)
        example = {"doc_id": batch.column("doc_id")[row].as_py(), "length": int(offsets[row + 1]) - start,
                   "text": raw[start:stop].tobytes().decode("utf-8", "replace"),
                   "bytes": raw[start:stop].tolist(),
                   "entropies": [round(float(x), 3) for x in ent[start:stop]],
                   "patch_lengths": {}}
        break
    if example is None:
        raise IndexError(f"{task.entropy_url}: no row {task.row}")
    for key, url in task.patch_urls.items():
        row = task.row
        for batch in iter_batches(url, "patches"):
            if row >= batch.num_rows:
                row -= batch.num_rows
                continue
            lengths, covered = [], 0
            for length in batch.column("patch_lengths")[row].as_py():
                if covered >= len(example["bytes"]):
                    break
                lengths.append(length)
                covered += length
            example["patch_lengths"][key] = lengths
            break
    return example


def threshold_sweep(f16_hist: np.ndarray, forced: int, total_bytes: int, docs: int) -> dict:
    """Average patch size and patches per document of mode 'entropy' at every threshold of SWEEP (exact)."""
    patterns = np.nonzero(f16_hist)[0].astype(np.uint16)
    values = patterns.view(np.float16).astype(np.float64)
    counts = f16_hist[patterns]
    order = np.argsort(values)
    values, counts = values[order], counts[order]
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    at_or_below = cumulative[np.searchsorted(values, SWEEP, side="right")]
    above = counts.sum() - at_or_below
    patches = forced + above
    return {"threshold": SWEEP.tolist(),
            "avg_patch_size": (total_bytes / np.maximum(patches, 1)).tolist(),
            "patches_per_doc": (patches / max(docs, 1)).tolist()}


def weighted_median(samples: list[tuple[list[float], int]]) -> float:
    """Lower median of pooled per-shard samples, each shard weighted by its document count."""
    values, weights = [], []
    for sample, docs in samples:
        if sample:
            values.extend(sample)
            weights.extend([docs / len(sample)] * len(sample))
    if not values:
        return 0.0
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.asarray(weights)[order])
    return float(np.asarray(values)[order][np.searchsorted(cumulative, cumulative[-1] / 2 - 1e-9)])


def _patch_sets(part: PartialStats, keys) -> dict:
    """Totals of each patch set in ``keys`` (manifest order) that ``part`` covers."""
    return {key: part.patch_sets[key].summary() for key in keys if key in part.patch_sets}


def _skipped(manifest: Manifest, unit_keys: list[str]) -> dict[str, int]:
    skipped: dict[str, int] = {}
    for unit_key in unit_keys:
        for reason, count in manifest.shards[unit_key].skips.get("counts", {}).items():
            skipped[reason] = skipped.get(reason, 0) + count
    return skipped


def _source_summary(part: PartialStats, unit_keys: list[str], manifest: Manifest) -> dict:
    """One source's view; ``example_at`` (unit key, row) names the document nearest its median length."""
    median = weighted_median(part.length_samples)
    example = min(part.candidates, key=lambda c: (abs(c.length - median), -c.length, c.unit_key, c.row),
                  default=None)
    return {
        "shards": part.shards, "docs": part.docs, "bytes": part.bytes,
        "mean_entropy": part.entropy_sum / part.bytes if part.bytes else None,
        "median_doc_length": round(median), "skipped": _skipped(manifest, unit_keys),
        "entropy_hist": part.entropy_hist.astype(np.int64).tolist(),
        "doc_length_hist": part.doc_length_hist.astype(np.int64).tolist(),
        "patch_sets": _patch_sets(part, manifest.patch_sets),
        "example_at": (example.unit_key, example.row) if example else None,
    }


def _shard_tasks(root: str, manifest: Manifest) -> list[ShardTask]:
    tasks = []
    for unit_key, record in sorted(manifest.shards.items()):
        patch_urls = {key: join(root, ps.shards[unit_key]["output"]) for key, ps in manifest.patch_sets.items()
                      if unit_key in ps.shards}
        tasks.append(ShardTask(unit_key, join(root, record.output), patch_urls))
    return tasks


def _shard_parts(tasks: list[ShardTask], use_ray: bool, total_bytes: int) -> dict[str, PartialStats]:
    """Every shard's partial statistics (one Ray task each), by unit key in sorted order."""
    parts = {}
    with progress(len(tasks), "stats", total_bytes=total_bytes) as bar:
        for unit_key, part in ray_runtime.map_unordered(_keyed_shard_stats, tasks, use_ray=use_ray, num_cpus=0.5):
            parts[unit_key] = part  # results arrive in any order
            bar.add(1, part.bytes)
    return dict(sorted(parts.items()))


def _keyed_shard_stats(task: ShardTask) -> tuple[str, PartialStats]:
    return task.unit_key, shard_stats(task)


def _attach_examples(sources: dict[str, dict], tasks: dict[str, ShardTask], use_ray: bool) -> None:
    """The second pass: each source's example document, read from the shard that holds it."""
    example_tasks = {name: ExampleTask(tasks[s["example_at"][0]].entropy_url, tasks[s["example_at"][0]].patch_urls,
                                       s["example_at"][1])
                     for name, s in sources.items() if s["example_at"]}
    found = ray_runtime.map_unordered(_named_example, list(example_tasks.items()), use_ray=use_ray, num_cpus=0.5)
    for name, example in found:
        sources[name]["example"] = example | {"unit_key": sources[name]["example_at"][0]}


def _byte_classes(part: PartialStats) -> dict:
    return {name: {"bytes": int(part.class_count[i]),
                   "mean_entropy": float(part.class_sum[i] / part.class_count[i]) if part.class_count[i] else None,
                   "hist": part.class_hist[i].astype(np.int64).tolist()}
            for i, name in enumerate(BYTE_CLASSES)}


def compute_stats(root: str, use_ray: bool = True, grouping: SourceGrouping | None = None,
                  examples: bool = True) -> dict:
    """Statistics of the dataset at ``root`` (see the module docstring); ``examples=False`` skips the example
    documents (one extra read per source)."""
    grouping = grouping or SourceGrouping()
    manifest = Manifest.load(root)
    if not manifest.shards:
        raise FileNotFoundError(f"{root}: no preprocessed shards (run preprocess first)")
    started = time.perf_counter()
    tasks = _shard_tasks(root, manifest)
    parts = _shard_parts(tasks, use_ray, sum(r.bytes for r in manifest.shards.values()))
    everything = total(list(parts.values()))
    groups: dict[str, list[str]] = {}
    for unit_key in parts:
        groups.setdefault(grouping.source_of(unit_key), []).append(unit_key)
    by_source = {name: (total([parts[k] for k in keys]), keys) for name, keys in groups.items()}
    sources = {name: _source_summary(part, keys, manifest)
               for name, (part, keys) in sorted(by_source.items(), key=lambda kv: -kv[1][0].bytes)}
    if examples:
        _attach_examples(sources, {t.unit_key: t for t in tasks}, use_ray)
    for source in sources.values():
        source.pop("example_at")
    patch_sets = {key: {"params": record.params, "calibration": record.calibration}
                  | everything.patch_sets.get(key, PatchSetCounts()).summary()
                  for key, record in manifest.patch_sets.items()}
    default = patch_sets.get(manifest.default_patch_set, {})
    docs, nbytes = everything.docs, everything.bytes
    stats = {
        "dataset": root,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 3),
        "entropy_model": manifest.entropy_model,
        "default_patch_set": manifest.default_patch_set,
        "grouping": grouping.to_dict(),
        "totals": {"docs": docs, "bytes": nbytes, "shards": len(parts), "sources": len(sources),
                   "skipped": manifest.totals()["skipped"],
                   "patches": default.get("patches", 0), "avg_patch_size": default.get("avg_patch_size", 0.0),
                   "mean_entropy": float(everything.class_sum.sum() / nbytes) if nbytes else None},
        "patch_sets": patch_sets,
        "sources": sources,
        "shards": {key: {"source": grouping.source_of(key), "docs": p.docs, "bytes": p.bytes,
                         "skipped": manifest.shards[key].skips.get("counts", {}),
                         "patches": {k: v.patches for k, v in p.patch_sets.items()}}
                   for key, p in parts.items()},
        "histograms": {
            "entropy": {"bins": ENTROPY_BINS.tolist(), "counts": everything.entropy_hist.astype(np.int64).tolist()},
            "doc_length": {"bins": DOC_LENGTH_BINS.tolist(),
                           "counts": everything.doc_length_hist.astype(np.int64).tolist()},
        },
        "byte_classes": _byte_classes(everything),
        "threshold_sweep": threshold_sweep(everything.f16_hist, everything.forced, nbytes, docs),
        "example": next((s["example"] for s in sources.values() if s.get("example")), None),
    }
    log.info("%d shards, %d sources, %s documents, %.1f MB in %.1fs", len(parts), len(sources), f"{docs:,}",
             nbytes / 1e6, stats["seconds"])
    return stats


def _named_example(item: tuple[str, ExampleTask]) -> tuple[str, dict]:
    return item[0], load_example(item[1])


def write_stats(root: str, stats: dict) -> tuple[str, str]:
    """stats.json and dashboard.html next to the manifest; returns their URLs."""
    from pipeline.stats.dashboard import render_dashboard

    stats_url, html_url = join(root, STATS_NAME), join(root, DASHBOARD_NAME)
    write_bytes_atomic(stats_url, json.dumps(stats, indent=1).encode())
    write_bytes_atomic(html_url, render_dashboard(stats).encode())
    return stats_url, html_url
