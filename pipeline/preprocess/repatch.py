"""Incremental re-patching: a new patch set from stored entropies, never touching the entropy model."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

from blt_model.patching import PatchingParams
from pipeline.dataset.manifest import Manifest
from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger
from pipeline.io.storage import join
from pipeline.preprocess.calibrate import count_patches, exact_global_threshold, summarize_shard
from pipeline.preprocess.patch_sets import CommitPolicy, complete_patch_sets

log = get_logger(__name__)


@dataclass
class RepatchConfig:
    dataset: str
    patching: PatchingParams = field(default_factory=PatchingParams)
    target_avg_patch_size: float | None = None  # calibrate the threshold to this (bytes per patch)
    set_default: bool = False
    use_ray: bool = True
    bisection_steps: int = 24


def calibrate(manifest: Manifest, params: PatchingParams, target: float, use_ray: bool, steps: int = 24):
    """Returns (params with calibrated threshold, calibration record for the manifest)."""
    if not params.has_threshold:
        hint = " (choose its budget with --patch-size)" if params.spec.budget else ""
        raise ValueError(f"mode {params.mode!r} has no threshold to calibrate{hint}")
    urls = [join(manifest.root, r.output) for r in manifest.shards.values()]
    if not urls:
        raise ValueError(f"{manifest.root}: no preprocessed shards to calibrate on")
    summary = reduce(lambda a, b: a + b, ray_runtime.map_unordered(summarize_shard, urls, use_ray=use_ray,
                                                                   num_cpus=0.5))
    if params.spec.exact_calibration and params.max_patch_length is None:
        threshold, achieved = exact_global_threshold(summary, target)
        method = "exact-quantile"
    else:
        threshold, achieved = _bisect(urls, params, target, use_ray, steps)
        method = "bisection"
    record = {"target_avg_patch_size": target, "achieved_avg_patch_size": achieved, "threshold": threshold,
              "method": method, "bytes": summary.total_bytes}
    return params.with_threshold(threshold), record


def _bisect(urls, params: PatchingParams, target: float, use_ray: bool, steps: int):
    """Patch count falls as the threshold rises (every mode here); bisect on the average patch size."""
    def average(threshold: float) -> float:
        counts = list(ray_runtime.map_unordered(count_patches, urls, use_ray=use_ray, num_cpus=0.5,
                                                params=params.with_threshold(threshold)))
        nbytes, patches = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return nbytes / max(patches, 1)

    low, high = -20.0, 20.0  # entropies of a 260-way softmax lie in [0, ln 260 ~ 5.56]; rises in [-5.6, 5.6]
    best = (abs(average(low) - target), low, average(low))
    for _ in range(steps):
        mid = (low + high) / 2
        achieved = average(mid)
        if abs(achieved - target) < best[0]:
            best = (abs(achieved - target), mid, achieved)
        if achieved < target:
            low = mid
        else:
            high = mid
    return best[1], best[2]


def run_repatch(cfg: RepatchConfig, policy: CommitPolicy | None = None) -> tuple[Manifest, str]:
    """Write (or complete) the patch set for ``cfg.patching``; returns (manifest, patch set key).

    Each patched unit is committed as its own record; units that a concurrent preprocess commits while this
    runs are picked up by re-reading the manifest until none is missing."""
    policy = policy or CommitPolicy()
    manifest = Manifest.load(cfg.dataset)
    if not manifest.shards:
        raise FileNotFoundError(f"{cfg.dataset}: no manifest with preprocessed shards (run preprocess first)")
    params, calibration = cfg.patching, None
    if cfg.target_avg_patch_size is not None:
        params, calibration = calibrate(manifest, params, cfg.target_avg_patch_size, cfg.use_ray,
                                        cfg.bisection_steps)
        log.info("calibrated threshold %.6g -> avg patch size %.4f (target %s)", params.threshold,
                 calibration["achieved_avg_patch_size"], cfg.target_avg_patch_size)
    key = params.key()
    manifest.commit_patch_set(key, params.to_dict(), calibration)
    written = complete_patch_sets(manifest, cfg.use_ray, policy, only=key)
    log.info("patch set %s: %d units patched, %d in all", key, written, len(manifest.patch_sets[key].shards))
    if cfg.set_default:
        manifest.commit_dataset(default_patch_set=key)
    manifest.compact(wait=policy.final_wait, only_if_pending=True)
    return manifest, key
