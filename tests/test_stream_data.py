"""Small pre-patched datasets written directly as Arrow shards + manifest (no entropy model), and the block
reader's handling of long documents stored as several rows (issue 14.2 contract)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.blocks import ShardFiles, ShardReader, count_batches, iter_docs, plan_blocks
from pipeline.manifest import Manifest, PatchSetRecord, ShardRecord
from pipeline.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch, patch_schema
from pipeline.storage import join

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


@pytest.mark.parametrize("with_continues", [True, False])
def test_long_documents_are_joined_and_blocks_never_split_them(tmp_path, with_continues):
    rng = random.Random(3)
    docs = [make_doc(rng, f"d{i}", size) for i, size in enumerate([30, 400, 7, 1000, 55, 260, 12, 5])]
    by_id = write_dataset(str(tmp_path), {"s3://raw/a.jsonl": docs}, batch_rows=3, part_bytes=64,
                          with_continues=with_continues)
    manifest = Manifest.load(str(tmp_path))
    record = manifest.shards["s3://raw/a.jsonl"]
    files = ShardFiles("s3://raw/a.jsonl", join(str(tmp_path), record.output),
                       join(str(tmp_path), manifest.patch_sets[PATCH_KEY].shards["s3://raw/a.jsonl"]["output"]), 0)
    [batches] = count_batches([files])
    blocks = plan_blocks([batches], 1)
    assert len(blocks) == batches > len(docs)  # parts of one document span several record batches
    reader, seen = ShardReader(), []
    for block in blocks:
        seen.extend(iter_docs(reader, files, (block.start, 0), (block.stop, 0)))
    assert [d.doc_id for d in seen] == [d["doc_id"] for d in docs]  # each document once, whole
    for doc in seen:
        want = by_id[doc.doc_id]
        assert doc.data.tobytes() == want["data"]
        if with_continues:
            assert doc.lengths.tolist() == want["lengths"]  # a patch cut by a row border is one patch again
        else:
            assert int(doc.lengths.sum()) == len(want["data"])


def test_numpy_patch_lengths_equal_the_model_helper():
    import torch

    from blt_model.patching import lengths_from_start_mask
    from pipeline.loader import patch_lengths_np

    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.random((3, int(rng.integers(2, 40)))) < rng.random()
        starts[:, :2] = True
        nxt = rng.random(3) < 0.5
        want = lengths_from_start_mask(torch.from_numpy(starts), None, torch.from_numpy(nxt))
        assert torch.equal(patch_lengths_np(starts, nxt), want)


def test_loader_joins_long_documents_without_eos_between_parts(tmp_path):
    import torch

    from blt_model.tokens import BYTE_OFFSET, EOS_ID
    from pipeline.loader import LoaderConfig, PatchedWindowLoader
    from pipeline.mixing import StreamConfig

    rng = random.Random(9)
    docs = [make_doc(rng, f"d{i}", size) for i, size in enumerate([40, 650, 9, 260, 1300, 70, 3, 250])]
    write_dataset(str(tmp_path), {"s3://raw/a.jsonl": docs[:5], "s3://raw/b.jsonl": docs[5:]}, batch_rows=2,
                  part_bytes=100)  # 2.6x and 13x the part size; parts cross record batches (= blocks)
    loader = PatchedWindowLoader(LoaderConfig(str(tmp_path), seq_len=64, batch_size=2,
                                              stream=StreamConfig(shuffle=False)))
    tokens, starts = [], []
    for doc in docs:
        tokens.extend([b + BYTE_OFFSET for b in doc["data"]] + [EOS_ID])
        flags = np.zeros(len(doc["data"]) + 1, dtype=bool)
        flags[np.cumsum([0] + doc["lengths"][:-1])] = True
        flags[-1] = True
        starts.extend(flags)
    inputs, lengths, seen = [], [], []
    it = iter(loader)
    while loader.epochs()[loader.sources[0].name] < 1:
        batch = next(it)
        inputs.append(batch.tokens.flatten())
        lengths.extend(batch.patch_lengths)
        seen.extend(d for d, e in zip(batch.doc_ids, batch.doc_epochs) if e == 0)
    it.close()
    got = torch.cat(inputs).numpy()[: len(tokens)]
    assert seen == [d["doc_id"] for d in docs]  # one document each, once
    assert got.tolist() == tokens[: len(got)] and len(got) >= len(tokens) - 64  # no EOS between parts
    for w, row in enumerate(lengths[: len(tokens) // 64]):
        real = row[row > 0].tolist()
        expected = np.array(starts[w * 64 : w * 64 + 64])
        expected[:2] = True
        assert np.flatnonzero(expected).tolist() == np.cumsum([0] + real[:-1]).tolist()  # joined patches
