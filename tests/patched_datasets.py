"""Small pre-patched datasets written directly as Arrow shards + manifest (no entropy model): random documents
with patch lengths, optionally stored as several rows per long document, for stream and training tests."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from pipeline.dataset.manifest import Manifest, PatchSetRecord, ShardRecord
from pipeline.dataset.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_schema
from pipeline.io.storage import join

PATCH_KEY = "test-patches"


def make_doc(rng: random.Random, doc_id: str, size: int) -> dict:
    gen = np.random.default_rng(rng.randrange(1 << 32))
    data = gen.integers(32, 127, size, dtype=np.uint8).tobytes()
    ends = np.cumsum(gen.integers(1, 10, size))
    ends = np.append(ends[ends < size], size)
    lengths = np.diff(ends, prepend=0).astype(int).tolist()
    return {"doc_id": doc_id, "data": data, "lengths": lengths}


def split_rows(doc: dict, part_bytes: int | None) -> list[dict]:
    """A document as rows of at most ``part_bytes`` bytes; a patch cut by a row border continues in the next row."""
    if part_bytes is None or len(doc["data"]) <= part_bytes:
        return [{**doc, "part": 0, "continues": False}]
    rows, ends = [], np.cumsum(doc["lengths"])
    starts = ends - np.array(doc["lengths"])
    for part, lo in enumerate(range(0, len(doc["data"]), part_bytes)):
        hi = min(lo + part_bytes, len(doc["data"]))
        lengths = [int(min(e, hi) - max(s, lo)) for s, e in zip(starts, ends) if s < hi and e > lo]
        continues = part > 0 and not np.any(starts == lo)
        rows.append({"doc_id": doc["doc_id"], "data": doc["data"][lo:hi], "lengths": lengths, "part": part,
                     "continues": bool(continues)})
    return rows


def write_shard(root: str, name: str, rows: list[dict], batch_rows: int, with_continues: bool = True) -> tuple:
    ent_rel, pat_rel = f"entropies/{name}.arrow", f"patches/{PATCH_KEY}/{name}.arrow"
    schema = patch_schema({})  # with or without the ``continues`` column, whichever this version writes
    if "continues" in schema.names:
        schema = schema.remove(schema.get_field_index("continues"))
    if with_continues:
        schema = schema.append(pa.field("continues", pa.bool_()))
    ent = ShardWriter(join(root, ent_rel), ENTROPY_SCHEMA)
    pat = ShardWriter(join(root, pat_rel), schema)
    for lo in range(0, len(rows), batch_rows):
        chunk = rows[lo : lo + batch_rows]
        data = [r["data"] for r in chunk]
        ent.write(entropy_batch([r["doc_id"] for r in chunk], ["src"] * len(chunk), [0] * len(chunk),
                                [r["part"] for r in chunk], data, np.zeros(sum(map(len, data)), np.float16)))
        offsets = np.concatenate([[0], np.cumsum([len(r["lengths"]) for r in chunk])]).astype(np.int64)
        flat = np.concatenate([np.array(r["lengths"], np.int32) for r in chunk])
        columns = [pa.array([r["doc_id"] for r in chunk], pa.string()),
                   pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))]
        if with_continues:
            columns.append(pa.array([r["continues"] for r in chunk], pa.bool_()))
        pat.write(pa.record_batch(columns, schema=schema))
    ent.close()
    pat.close()
    return ent_rel, pat_rel


def write_dataset(root: str, shards: dict[str, list[dict]], batch_rows: int = 8, part_bytes: int | None = None,
                  with_continues: bool = True) -> dict[str, dict]:
    """``shards``: input url -> documents. Returns doc_id -> document (for audits)."""
    manifest = Manifest(root=root)
    patch_set = PatchSetRecord(params={})
    by_id = {}
    for i, (url, docs) in enumerate(sorted(shards.items())):
        rows = [row for doc in docs for row in split_rows(doc, part_bytes)]
        ent_rel, pat_rel = write_shard(root, f"part-{i:04d}", rows, batch_rows, with_continues)
        nbytes = sum(len(d["data"]) for d in docs)
        manifest.shards[url] = ShardRecord(url, 0, "", ent_rel, len(docs), nbytes, {}, 0.0)
        patch_set.shards[url] = {"output": pat_rel, "docs": len(docs), "bytes": nbytes,
                                 "patches": sum(len(d["lengths"]) for d in docs)}
        by_id.update({d["doc_id"]: d for d in docs})
    manifest.patch_sets[PATCH_KEY] = patch_set
    manifest.default_patch_set = PATCH_KEY
    manifest.save()
    return by_id


def corpus(prefix: str, shards: int, docs: int, seed: int = 0, sizes: tuple[int, int] = (5, 200),
           url: str = "s3://raw") -> dict[str, list[dict]]:
    rng = random.Random(seed)
    return {f"{url}/{prefix}/s{s}.jsonl": [make_doc(rng, f"{prefix}{s}-{d}", rng.randint(*sizes))
                                           for d in range(docs)] for s in range(shards)}
