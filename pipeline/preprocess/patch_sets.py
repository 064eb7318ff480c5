"""Completing patch sets from stored entropies, shared by the driver (after scoring) and ``repatch``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.dataset.manifest import Manifest
from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger
from pipeline.preprocess.patch_stage import repatch_shard

log = get_logger("preprocess")


@dataclass
class CommitPolicy:
    """When manifest.json is compacted from the per-unit records (see ``Manifest.maybe_compact``)."""

    every: int = 1000
    seconds: float = 300.0
    final_wait: float = 10.0  # at the end, wait this long for another job's compaction lease


def complete_patch_sets(manifest: Manifest, use_ray: bool, policy: CommitPolicy, only: str | None = None,
                        rounds: int = 20) -> int:
    """Give every committed unit an entry in every patch set (or only ``only``), from stored entropies.

    Re-reads the stored manifest between rounds, so units that a concurrent job committed meanwhile get their
    patches too (whichever job finishes last completes the sets). Returns the number of entries written."""
    written = 0
    for _ in range(rounds):
        manifest.refresh()
        todo = [(name, {"input_url": unit, "entropy_output": record.output})
                for name, patch_set in sorted(manifest.patch_sets.items()) if only in (None, name)
                for unit, record in sorted(manifest.shards.items()) if unit not in patch_set.shards]
        if not todo:
            break
        for name in sorted({name for name, _ in todo}):
            tasks = [task for n, task in todo if n == name]
            log.info("patch set %s: %d units to patch from stored entropies", name, len(tasks))
            params = manifest.patch_sets[name].params
            for result in ray_runtime.map_unordered(repatch_shard, tasks, use_ray=use_ray, num_cpus=0.5,
                                                    root=manifest.root, params_dict=params):
                manifest.commit_patch(name, result["input_url"], result, params)
                manifest.maybe_compact(policy.every, policy.seconds)
                written += 1
    return written
