"""The training loader: every byte once per epoch, patches cut at window borders, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from blt_model.tokens import BYTE_OFFSET, EOS_ID
from pipeline.loader import LoaderConfig, PatchedWindowLoader
from pipeline.manifest import Manifest
from pipeline.preprocess import PreprocessConfig, run_preprocess
from pipeline.shards import iter_batches
from pipeline.storage import join


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


def _stream(dataset: str, shards: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rank's token stream and patch-start flags, rebuilt independently from the stored files."""
    manifest = Manifest.load(dataset)
    key = manifest.default_patch_set
    tokens, starts = [], []
    for url in shards:
        ent = join(dataset, manifest.shards[url].output)
        pat = join(dataset, manifest.patch_sets[key].shards[url]["output"])
        for eb, pb in zip(iter_batches(ent, "entropies"), iter_batches(pat, "patches")):
            for data, lengths in zip(eb.column("bytes").to_pylist(), pb.column("patch_lengths").to_pylist()):
                tokens.extend([b + BYTE_OFFSET for b in data] + [EOS_ID])
                flags = [False] * (len(data) + 1)
                for pos in np.cumsum([0] + lengths[:-1]):
                    flags[pos] = True
                flags[-1] = True
                starts.extend(flags)
    return np.array(tokens), np.array(starts)


def test_every_byte_once_per_epoch_and_patches_cut_at_borders(dataset):
    cfg = LoaderConfig(dataset, seq_len=64, batch_size=4, rank=1, world_size=2)
    loader = PatchedWindowLoader(cfg)
    stream, flags = _stream(dataset, [s[0] for s in loader.shards])
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


def test_ranks_get_disjoint_shards(dataset):
    a = PatchedWindowLoader(LoaderConfig(dataset, seq_len=32, batch_size=2, rank=0, world_size=2))
    b = PatchedWindowLoader(LoaderConfig(dataset, seq_len=32, batch_size=2, rank=1, world_size=2))
    assert {s[0] for s in a.shards}.isdisjoint({s[0] for s in b.shards})
    assert len(a.shards) + len(b.shards) == 3
    with pytest.raises(ValueError, match="no shards"):
        PatchedWindowLoader(LoaderConfig(dataset, rank=3, world_size=4))


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
