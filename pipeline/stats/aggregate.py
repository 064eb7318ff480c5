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

from pipeline.dataset.documents import DocumentSpans
from pipeline.dataset.layout import DASHBOARD_NAME, STATS_NAME, input_url_of
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import binary_values, continues_column, flat_values, iter_batches
from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger, progress
from pipeline.io.storage import join, write_bytes_atomic

log = get_logger("stats")  # users see [blt.stats], not the module name

ENTROPY_BINS = np.round(np.arange(0.0, 6.01, 0.1), 2)  # nats; a 260-way softmax stays below ln 260 = 5.56
PATCH_LENGTH_MAX = 64  # the last bin counts patches of this length or longer
DOC_LENGTH_BINS = 2.0 ** np.arange(0, 25)  # bytes, powers of two
BYTE_CLASSES = ("letters", "digits", "whitespace", "punctuation", "utf8_multibyte", "other")
SWEEP = np.round(np.arange(0.0, 5.61, 0.05), 2)
EXAMPLE_BYTES = 1500
LENGTH_SAMPLE = 64  # per shard: all document lengths up to this many, else this many quantiles
CANDIDATE_QUANTILES = np.linspace(0.1, 0.9, 9)  # example candidates per shard, by document length


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


@dataclass
class ExampleTask:
    entropy_url: str
    patch_urls: dict
    row: int  # row index in the entropy shard of the document's first part


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


def shard_stats(task: ShardTask) -> dict:
    """Partial statistics of one shard (sums and histograms only, so they add up across shards)."""
    # One count per (byte class, float16 pattern of the score): every per-byte statistic derives from it.
    class_f16 = np.zeros(len(BYTE_CLASSES) << 16, dtype=np.int64)
    f16_hist = np.zeros(1 << 16, dtype=np.int64)
    documents = _Documents()
    nbytes = 0
    held: int | None = None  # the previous batch's final score: counted only if the next row continues it
    for batch in iter_batches(task.entropy_url, "entropies"):
        if not batch.num_rows:
            continue
        ent, offsets = flat_values(batch.column("entropies"))
        raw, _ = binary_values(batch.column("bytes"))
        lengths = np.diff(offsets)
        starts = documents.add(lengths, batch.column("part").to_numpy(zero_copy_only=False))
        patterns = ent.view(np.uint16)
        class_f16 += np.bincount((CLASS_OF_BYTE[raw] << 16) | patterns, minlength=len(BYTE_CLASSES) << 16)
        # Scores that can start a patch in mode 'entropy' (for the threshold sweep): not a document's first score
        # (bytes 0 and 1 always start patches) and not its last (it points past the document). A part > 0 row
        # continues its document: its first score is eligible, and the previous row keeps its last one.
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
    by_class = class_f16.reshape(len(BYTE_CLASSES), 1 << 16)
    class_count = by_class.sum(axis=1)
    class_sum = by_class @ F16_VALUE
    class_hist = np.stack([np.bincount(F16_BIN, weights=row, minlength=len(ENTROPY_BINS)) for row in by_class])
    class_hist = class_hist.astype(np.int64)
    entropy_hist = class_hist.sum(axis=0)
    forced = int((doc_lengths >= 1).sum() + (doc_lengths >= 2).sum())
    patch_sets = {}
    for key, url in task.patch_urls.items():
        counter = _PatchLengths()
        for batch in iter_batches(url, "patches"):
            lengths, offsets = flat_values(batch.column("patch_lengths"))
            counter.add(lengths, offsets, continues_column(batch))
        counter.finish()
        patch_sets[key] = {"patches": counter.patches, "length_hist": counter.hist.tolist()}
    if len(doc_lengths) <= LENGTH_SAMPLE:
        length_sample = np.sort(doc_lengths)
    else:
        length_sample = np.quantile(doc_lengths, (np.arange(LENGTH_SAMPLE) + 0.5) / LENGTH_SAMPLE)
    candidates = []
    if len(doc_lengths):
        order = np.argsort(doc_lengths, kind="stable")
        picks = sorted({int(order[int(q * (len(order) - 1) + 0.5)]) for q in CANDIDATE_QUANTILES})
        candidates = [{"row": int(first_rows[i]), "length": int(doc_lengths[i])} for i in picks]
    return {
        "unit_key": task.unit_key, "docs": len(doc_lengths), "bytes": nbytes,
        "entropy_sum": float(class_sum.sum()),
        "entropy_hist": entropy_hist.tolist(), "class_sum": class_sum.tolist(), "class_count": class_count.tolist(),
        "class_hist": class_hist.tolist(), "doc_length_hist": _doc_length_hist(doc_lengths).tolist(),
        "patch_sets": patch_sets, "f16_nonzero": np.nonzero(f16_hist)[0].astype(np.uint16),
        "f16_counts": f16_hist[f16_hist > 0], "forced": forced,
        "length_sample": [float(x) for x in length_sample], "candidates": candidates,
    }


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


def _sum(parts: list[dict], name: str, size: int | tuple) -> np.ndarray:
    out = np.zeros(size)
    for p in parts:
        out = out + np.asarray(p[name])
    return out


def _patch_set_totals(parts: list[dict], key: str) -> dict:
    covered = [p for p in parts if key in p["patch_sets"]]
    patches = sum(p["patch_sets"][key]["patches"] for p in covered)
    nbytes = sum(p["bytes"] for p in covered)
    hist = _sum([p["patch_sets"][key] for p in covered], "length_hist", PATCH_LENGTH_MAX + 1)
    return {"shards": len(covered), "bytes": nbytes, "patches": patches,
            "avg_patch_size": nbytes / patches if patches else 0.0,
            "patches_per_doc": patches / max(1, sum(p["docs"] for p in covered)),
            "length_hist": hist.astype(np.int64).tolist()}


def compute_stats(root: str, use_ray: bool = True, grouping: SourceGrouping | None = None,
                  examples: bool = True) -> dict:
    """Statistics of the dataset at ``root`` (see the module docstring); ``examples=False`` skips the example
    documents (one extra read per source)."""
    grouping = grouping or SourceGrouping()
    manifest = Manifest.load(root)
    if not manifest.shards:
        raise FileNotFoundError(f"{root}: no preprocessed shards (run preprocess first)")
    tasks = []
    for unit_key, record in sorted(manifest.shards.items()):
        patch_urls = {key: join(root, ps.shards[unit_key]["output"]) for key, ps in manifest.patch_sets.items()
                      if unit_key in ps.shards}
        tasks.append(ShardTask(unit_key, join(root, record.output), patch_urls))
    by_key = {t.unit_key: t for t in tasks}
    total_bytes = sum(r.bytes for r in manifest.shards.values())
    started = time.perf_counter()
    parts = []
    with progress(len(tasks), "stats", total_bytes=total_bytes) as bar:
        for part in ray_runtime.map_unordered(shard_stats, tasks, use_ray=use_ray, num_cpus=0.5):
            parts.append(part)
            bar.add(1, part["bytes"])
    parts.sort(key=lambda p: p["unit_key"])
    n_ent, n_doc = len(ENTROPY_BINS), len(DOC_LENGTH_BINS)

    docs, nbytes = sum(p["docs"] for p in parts), sum(p["bytes"] for p in parts)
    class_sum, class_count = _sum(parts, "class_sum", len(BYTE_CLASSES)), _sum(parts, "class_count", len(BYTE_CLASSES))
    class_hist = _sum(parts, "class_hist", (len(BYTE_CLASSES), n_ent))
    patch_sets = {key: {"params": record.params, "calibration": record.calibration} | _patch_set_totals(parts, key)
                  for key, record in manifest.patch_sets.items()}

    groups: dict[str, list[dict]] = {}
    for p in parts:
        groups.setdefault(grouping.source_of(p["unit_key"]), []).append(p)
    sources = {}
    for name, members in sorted(groups.items(), key=lambda kv: -sum(p["bytes"] for p in kv[1])):
        src_bytes = sum(p["bytes"] for p in members)
        skipped: dict[str, int] = {}
        for p in members:
            for reason, count in manifest.shards[p["unit_key"]].skips.get("counts", {}).items():
                skipped[reason] = skipped.get(reason, 0) + count
        median = weighted_median([(p["length_sample"], p["docs"]) for p in members])
        candidates = [(abs(c["length"] - median), -c["length"], p["unit_key"], c["row"])
                      for p in members for c in p["candidates"]]
        sources[name] = {
            "shards": len(members), "docs": sum(p["docs"] for p in members), "bytes": src_bytes,
            "mean_entropy": sum(p["entropy_sum"] for p in members) / src_bytes if src_bytes else None,
            "median_doc_length": round(median), "skipped": skipped,
            "entropy_hist": _sum(members, "entropy_hist", n_ent).astype(np.int64).tolist(),
            "doc_length_hist": _sum(members, "doc_length_hist", n_doc).astype(np.int64).tolist(),
            "patch_sets": {key: _patch_set_totals(members, key) for key in manifest.patch_sets
                           if any(key in p["patch_sets"] for p in members)},
            "example_at": min(candidates)[2:] if candidates else None,
        }
    if examples:
        example_tasks = {name: ExampleTask(by_key[s["example_at"][0]].entropy_url,
                                           by_key[s["example_at"][0]].patch_urls, s["example_at"][1])
                         for name, s in sources.items() if s["example_at"]}
        names = list(example_tasks)
        found = ray_runtime.map_unordered(_named_example, [(n, example_tasks[n]) for n in names], use_ray=use_ray,
                                          num_cpus=0.5)
        for name, example in found:
            sources[name]["example"] = example | {"unit_key": sources[name]["example_at"][0]}
    for source in sources.values():
        source.pop("example_at")
    shards = {p["unit_key"]: {"source": grouping.source_of(p["unit_key"]), "docs": p["docs"], "bytes": p["bytes"],
                              "skipped": manifest.shards[p["unit_key"]].skips.get("counts", {}),
                              "patches": {k: v["patches"] for k, v in p["patch_sets"].items()}}
              for p in parts}
    f16 = np.zeros(1 << 16, dtype=np.int64)
    for p in parts:
        f16[p["f16_nonzero"]] += p["f16_counts"]
    default = patch_sets.get(manifest.default_patch_set, {})
    first_example = next((s["example"] for s in sources.values() if s.get("example")), None)
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
                   "mean_entropy": float(class_sum.sum() / nbytes) if nbytes else None},
        "patch_sets": patch_sets,
        "sources": sources,
        "shards": shards,
        "histograms": {
            "entropy": {"bins": ENTROPY_BINS.tolist(), "counts": _sum(parts, "entropy_hist", n_ent).astype(np.int64).tolist()},
            "doc_length": {"bins": DOC_LENGTH_BINS.tolist(),
                           "counts": _sum(parts, "doc_length_hist", n_doc).astype(np.int64).tolist()},
        },
        "byte_classes": {name: {"bytes": int(class_count[i]),
                                "mean_entropy": float(class_sum[i] / class_count[i]) if class_count[i] else None,
                                "hist": class_hist[i].astype(np.int64).tolist()}
                         for i, name in enumerate(BYTE_CLASSES)},
        "threshold_sweep": threshold_sweep(f16, sum(p["forced"] for p in parts), nbytes, docs),
        "example": first_example,
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
