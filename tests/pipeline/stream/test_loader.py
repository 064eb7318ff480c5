"""The training loader: every byte once per epoch, patches cut at window borders, exact resume (shuffled)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from blt_model.tokens import BYTE_OFFSET, EOS_ID
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.shards import iter_batches
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader
from pipeline.stream.mixing import StreamConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    (root / "raw").mkdir()
    for shard in range(3):
        write_object(str(root / "raw" / f"s{shard}.jsonl"), jsonl_bytes(make_docs(10 + shard, 30)))
    save_tiny_entropy_model(str(root / "em"))
    run_preprocess(PreprocessConfig(inputs=str(root / "raw" / "*.jsonl"), output=str(root / "ds"),
                                    entropy_model=str(root / "em"), span=256, batch_bytes=3000, use_ray=False))
    return str(root / "ds")


def _stream(dataset: str, blocks: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The rank's token stream and patch-start flags, rebuilt independently from the stored files, for a list of
    (input url, record batch) in reading order."""
    manifest = Manifest.load(dataset)
    key = manifest.default_patch_set
    tokens, starts = [], []
    for url, index in blocks:
        ent = join(dataset, manifest.shards[url].output)
        pat = join(dataset, manifest.patch_sets[key].shards[url]["output"])
        pairs = zip(iter_batches(ent, "entropies"), iter_batches(pat, "patches"))
        for eb, pb in itertools.islice(pairs, index, index + 1):
            for data, lengths in zip(eb.column("bytes").to_pylist(), pb.column("patch_lengths").to_pylist()):
                tokens.extend([b + BYTE_OFFSET for b in data] + [EOS_ID])
                flags = [False] * (len(data) + 1)
                for pos in np.cumsum([0] + lengths[:-1]):
                    flags[pos] = True
                flags[-1] = True
                starts.extend(flags)
    return np.array(tokens), np.array(starts)


def test_every_byte_once_per_epoch_and_patches_cut_at_borders(dataset):
    # Shuffle off: rank 1 of 2 reads blocks 1, 3, 5... (one record batch each) of the manifest order.
    cfg = LoaderConfig(dataset, seq_len=64, batch_size=4, rank=1, world_size=2, stream=StreamConfig(shuffle=False))
    loader = PatchedWindowLoader(cfg)
    source = loader.sources[0]
    blocks = [source.blocks[i] for i in range(1, len(source.blocks), 2)]
    assert all(b.stop == b.start + 1 for b in blocks) and len(source.blocks) >= 6
    stream, flags = _stream(dataset, [(source.files[b.shard].input_url, b.start) for b in blocks])
    windows = (len(stream) - 1) // 64
    batches = list(itertools.islice(iter(loader), windows // 4))
    inputs = torch.cat([b.tokens for b in batches]).flatten().numpy()
    labels = torch.cat([b.labels for b in batches]).flatten().numpy()
    assert np.array_equal(inputs, stream[: len(inputs)])  # each byte is an input exactly once, in order
    assert np.array_equal(labels, stream[1 : len(inputs) + 1])
    for batch_index, batch in enumerate(batches):
        for row in range(batch.tokens.shape[0]):
            lengths = batch.patch_lengths[row]
            assert int(lengths.sum()) == 64
            real = lengths[lengths > 0].tolist()
            assert real[0] == 1 and all(x >= 1 for x in real)
            # Boundaries inside the window are the stored ones (cut at the window border, plus position 1).
            offset = (batch_index * 4 + row) * 64
            expected = flags[offset : offset + 64].copy()
            expected[:2] = True
            got = np.zeros(64, dtype=bool)
            got[np.cumsum([0] + real[:-1])] = True
            assert np.array_equal(got, expected)
            # HF's trailing zero-length patch exactly when the next byte (the last label) starts a patch.
            assert bool(batch.next_starts[row]) == bool(flags[offset + 64])
            if batch.next_starts[row]:
                assert lengths.shape[0] > len(real) and lengths[len(real)] == 0


def test_ranks_get_disjoint_documents_more_ranks_than_shards(dataset):
    seen: list[str] = []
    for rank in range(4):  # 3 shards, 4 ranks
        loader = PatchedWindowLoader(LoaderConfig(dataset, seq_len=32, batch_size=2, rank=rank, world_size=4))
        it = iter(loader)
        while loader.epochs()[loader.sources[0].name] < 1:
            batch = next(it)
            seen.extend(d for d, e in zip(batch.doc_ids, batch.doc_epochs) if e == 0)
        it.close()
    assert sorted(seen) == sorted(f"s{s}-{i}" for s in (10, 11, 12) for i in range(30))


def test_resume_yields_the_same_batches_across_epochs(dataset):
    cfg = LoaderConfig(dataset, seq_len=48, batch_size=3)
    total = 300  # more than one epoch
    reference = list(itertools.islice(iter(PatchedWindowLoader(cfg)), total))
    first = PatchedWindowLoader(cfg)
    head = list(itertools.islice(iter(first), 37))
    state = first.state_dict()
    resumed = PatchedWindowLoader(cfg)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(iter(resumed), total - 37))
    for want, got in zip(reference, head + tail):
        assert torch.equal(want.tokens, got.tokens)
        assert torch.equal(want.patch_lengths, got.patch_lengths)
    assert resumed.state_dict()["epoch"] >= 1
