"""Partial statistics add up: any grouping of shards gives the same sums as the whole (typed ``+``)."""

from __future__ import annotations

import numpy as np
from patched_datasets import PATCH_KEY, corpus, write_dataset

from pipeline.dataset.manifest import Manifest
from pipeline.io.storage import join
from pipeline.stats.partial import PartialStats, ShardTask, shard_stats, total


def _as_tuple(p: PartialStats) -> tuple:
    return (p.shards, p.docs, p.bytes, p.forced, p.class_count.tolist(), p.class_hist.tolist(),
            p.doc_length_hist.tolist(), p.f16_hist.tolist(),
            {k: (v.patches, v.bytes, v.docs, v.shards, v.length_hist.tolist()) for k, v in sorted(p.patch_sets.items())})


def test_shard_partials_add_in_any_grouping(tmp_path):
    root = str(tmp_path)
    docs = write_dataset(root, corpus("a", 3, 20, sizes=(1, 700)), batch_rows=5, part_bytes=128)
    manifest = Manifest.load(root)
    parts = [shard_stats(ShardTask(key, join(root, rec.output),
                                   {PATCH_KEY: join(root, manifest.patch_sets[PATCH_KEY].shards[key]["output"])}))
             for key, rec in sorted(manifest.shards.items())]
    a, b, c = parts
    assert _as_tuple((a + b) + c) == _as_tuple(a + (b + c)) == _as_tuple(total([c, a, b]))
    whole = total(parts)
    assert whole.docs == len(docs) == 60 and whole.bytes == sum(len(d["data"]) for d in docs.values())
    assert whole.patch_sets[PATCH_KEY].patches == sum(len(d["lengths"]) for d in docs.values())
    assert int(whole.doc_length_hist.sum()) == 60 and int(whole.class_count.sum()) == whole.bytes
    assert _as_tuple(total([])) == _as_tuple(PartialStats()) and np.all(PartialStats().f16_hist == 0)
