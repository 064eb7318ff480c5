"""Dataset statistics, aggregated with Ray: one task per shard returns small partial sums, the driver adds them.

What comes out (``stats.json`` next to the manifest, rendered by ``dashboard.py``):
totals (docs, bytes, patches and average patch size per patch set, skips by reason, per input source);
histograms of patch length, per-byte entropy and document length; entropy by byte class; a threshold sweep
(average patch size and patches per document vs threshold, exact, from the float16 entropy histogram) with
every stored patch set marked; a per-shard table; one example document with its patches and entropies.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import ray_runtime
from .calibrate import summarize_shard
from .manifest import Manifest
from .shards import binary_values, flat_values, iter_batches
from .storage import join, write_bytes_atomic

ENTROPY_BINS = np.round(np.arange(0.0, 6.01, 0.1), 2)  # nats; a 260-way softmax stays below ln 260 = 5.56
PATCH_LENGTH_MAX = 64  # the last bin counts patches of this length or longer
DOC_LENGTH_BINS = 2.0 ** np.arange(0, 25)  # bytes, powers of two
BYTE_CLASSES = ("letters", "digits", "whitespace", "punctuation", "utf8_multibyte", "other")
SWEEP = np.round(np.arange(0.0, 5.61, 0.05), 2)
EXAMPLE_BYTES = 1500


def byte_class(values: np.ndarray) -> np.ndarray:
    """Index into BYTE_CLASSES for every byte."""
    out = np.full(values.shape, 5, dtype=np.int8)
    letters = ((values >= 65) & (values <= 90)) | ((values >= 97) & (values <= 122))
    digits = (values >= 48) & (values <= 57)
    space = np.isin(values, (9, 10, 11, 12, 13, 32))
    punct = (values >= 33) & (values <= 126) & ~letters & ~digits
    out[letters], out[digits], out[space], out[punct], out[values >= 128] = 0, 1, 2, 3, 4
    return out


@dataclass
class ShardTask:
    input_url: str
    entropy_url: str
    patch_urls: dict  # patch set key -> shard url
    want_example: bool


def shard_stats(task: ShardTask) -> dict:
    """Partial statistics of one shard (sums and histograms only, so they add up across shards)."""
    entropy_hist = np.zeros(len(ENTROPY_BINS), dtype=np.int64)
    class_sum = np.zeros(len(BYTE_CLASSES))
    class_count = np.zeros(len(BYTE_CLASSES), dtype=np.int64)
    class_hist = np.zeros((len(BYTE_CLASSES), len(ENTROPY_BINS)), dtype=np.int64)
    doc_hist = np.zeros(len(DOC_LENGTH_BINS), dtype=np.int64)
    docs = nbytes = 0
    example = None
    for batch in iter_batches(task.entropy_url, "entropies"):
        ent, offsets = flat_values(batch.column("entropies"))
        ent = ent.astype(np.float32)
        raw, _ = binary_values(batch.column("bytes"))
        bins = np.clip((ent * 10).astype(np.int64), 0, len(ENTROPY_BINS) - 1)
        entropy_hist += np.bincount(bins, minlength=len(ENTROPY_BINS))
        classes = byte_class(raw)
        class_sum += np.bincount(classes, weights=ent, minlength=len(BYTE_CLASSES))
        class_count += np.bincount(classes, minlength=len(BYTE_CLASSES))
        np.add.at(class_hist, (classes, bins), 1)
        lengths = np.diff(offsets)
        doc_hist += np.bincount(np.clip(np.log2(np.maximum(lengths, 1)).astype(np.int64), 0, len(DOC_LENGTH_BINS) - 1),
                                minlength=len(DOC_LENGTH_BINS))
        docs += batch.num_rows
        nbytes += int(lengths.sum())
        if task.want_example and example is None and batch.num_rows:
            row = int(np.argmax(lengths))  # the longest document of the first batch shows the most patches
            start, stop = int(offsets[row]), int(offsets[row]) + min(EXAMPLE_BYTES, int(lengths[row]))
            example = {"doc_id": batch.column("doc_id")[row].as_py(), "row": row,
                       "text": raw[start:stop].tobytes().decode("utf-8", "replace"),
                       "bytes": raw[start:stop].tolist(),
                       "entropies": [round(float(x), 3) for x in ent[start:stop]],
                       "patch_lengths": {}}
    patch_sets = {}
    for key, url in task.patch_urls.items():
        hist = np.zeros(PATCH_LENGTH_MAX + 1, dtype=np.int64)
        patches = 0
        for i, batch in enumerate(iter_batches(url, "patches")):
            lengths, _ = flat_values(batch.column("patch_lengths"))
            hist += np.bincount(np.minimum(lengths, PATCH_LENGTH_MAX), minlength=PATCH_LENGTH_MAX + 1)
            patches += len(lengths)
            if example is not None and i == 0 and batch.num_rows:
                example["patch_lengths"][key] = batch.column("patch_lengths")[example["row"]].as_py()
        patch_sets[key] = {"patches": patches, "length_hist": hist.tolist()}
    summary = summarize_shard(task.entropy_url)
    return {
        "input_url": task.input_url, "docs": docs, "bytes": nbytes,
        "entropy_hist": entropy_hist.tolist(), "class_sum": class_sum.tolist(), "class_count": class_count.tolist(),
        "class_hist": class_hist.tolist(), "doc_length_hist": doc_hist.tolist(), "patch_sets": patch_sets,
        "f16_hist": summary.histogram, "forced": summary.forced_patches, "example": example,
    }


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


def compute_stats(root: str, use_ray: bool = True) -> dict:
    manifest = Manifest.load(root)
    if not manifest.shards:
        raise FileNotFoundError(f"{root}: no preprocessed shards (run preprocess first)")
    tasks = []
    for i, (url, record) in enumerate(sorted(manifest.shards.items())):
        patch_urls = {key: join(root, ps.shards[url]["output"]) for key, ps in manifest.patch_sets.items()
                      if url in ps.shards}
        tasks.append(ShardTask(url, join(root, record.output), patch_urls, want_example=i == 0))
    started = time.perf_counter()
    parts = []
    for count, part in enumerate(ray_runtime.map_unordered(shard_stats, tasks, use_ray=use_ray, num_cpus=0.5), 1):
        parts.append(part)
        print(f"[stats] {count}/{len(tasks)} shards", file=sys.stderr, flush=True)
    parts.sort(key=lambda p: p["input_url"])

    def total(name):
        return np.sum([np.asarray(p[name]) for p in parts], axis=0)

    docs, nbytes = int(total("docs")), int(total("bytes"))
    class_sum, class_count = total("class_sum"), total("class_count")
    patch_sets = {}
    for key, record in manifest.patch_sets.items():
        covered = [p for p in parts if key in p["patch_sets"]]
        patches = sum(p["patch_sets"][key]["patches"] for p in covered)
        covered_bytes = sum(p["bytes"] for p in covered)
        patch_sets[key] = {
            "params": record.params, "calibration": record.calibration,
            "shards": len(covered), "bytes": covered_bytes, "patches": patches,
            "avg_patch_size": covered_bytes / patches if patches else 0.0,
            "patches_per_doc": patches / max(1, sum(p["docs"] for p in covered)),
            "length_hist": np.sum([p["patch_sets"][key]["length_hist"] for p in covered], axis=0).tolist()
            if covered else [0] * (PATCH_LENGTH_MAX + 1),
        }
    sources = {p["input_url"]: {"docs": p["docs"], "bytes": p["bytes"],
                                "skipped": manifest.shards[p["input_url"]].skips.get("counts", {}),
                                "patches": {k: v["patches"] for k, v in p["patch_sets"].items()}}
               for p in parts}
    f16 = np.sum([p["f16_hist"] for p in parts], axis=0)
    stats = {
        "dataset": root,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 3),
        "entropy_model": manifest.entropy_model,
        "default_patch_set": manifest.default_patch_set,
        "totals": {"docs": docs, "bytes": nbytes, "shards": len(parts),
                   "skipped": manifest.totals()["skipped"],
                   "patches": patch_sets.get(manifest.default_patch_set, {}).get("patches", 0),
                   "avg_patch_size": patch_sets.get(manifest.default_patch_set, {}).get("avg_patch_size", 0.0)},
        "patch_sets": patch_sets,
        "sources": sources,
        "histograms": {
            "entropy": {"bins": ENTROPY_BINS.tolist(), "counts": total("entropy_hist").tolist()},
            "doc_length": {"bins": DOC_LENGTH_BINS.tolist(), "counts": total("doc_length_hist").tolist()},
        },
        "byte_classes": {name: {"bytes": int(class_count[i]),
                                "mean_entropy": float(class_sum[i] / class_count[i]) if class_count[i] else None,
                                "hist": total("class_hist")[i].tolist()}
                         for i, name in enumerate(BYTE_CLASSES)},
        "threshold_sweep": threshold_sweep(f16, int(total("forced")), nbytes, docs),
        "example": parts[0]["example"],
    }
    return stats


def write_stats(root: str, stats: dict) -> tuple[str, str]:
    """stats.json and dashboard.html next to the manifest; returns their URLs."""
    from .dashboard import render_dashboard

    stats_url, html_url = join(root, "stats.json"), join(root, "dashboard.html")
    write_bytes_atomic(stats_url, json.dumps(stats, indent=1).encode())
    write_bytes_atomic(html_url, render_dashboard(stats).encode())
    return stats_url, html_url
