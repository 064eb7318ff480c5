"""Small pre-patched datasets written directly as Arrow shards + manifest (no entropy model), and the block
reader's handling of long documents stored as several rows (issue 14.2 contract)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from patched_datasets import PATCH_KEY, make_doc, write_dataset

from pipeline.dataset.manifest import Manifest
from pipeline.io.storage import join
from pipeline.stream.blocks import ShardFiles, ShardReader, count_batches, iter_docs, plan_blocks


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
    from pipeline.stream.packing import patch_lengths_np

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
    from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader
    from pipeline.stream.mixing import StreamConfig

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
