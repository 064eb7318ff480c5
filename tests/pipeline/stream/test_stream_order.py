"""The stream's order: seeded block shuffle per epoch, balanced over any number of workers, elastic resume audits
(no document twice, none skipped within an epoch), exact replay on the same worker count."""

from __future__ import annotations

import collections
import itertools
import json

import pytest
import torch
from patched_datasets import corpus, write_dataset

from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader
from pipeline.stream.mixing import SourceSpec, StreamConfig


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("stream") / "ds")
    docs = write_dataset(root, corpus("a", 3, 40, seed=1), batch_rows=8)
    return root, docs


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("mix")
    web = write_dataset(str(base / "web"), corpus("w", 2, 50, seed=2, sizes=(5, 120)), batch_rows=6)
    code = write_dataset(str(base / "code"), corpus("c", 3, 20, seed=3, sizes=(40, 300)), batch_rows=5)
    return str(base / "web"), str(base / "code"), web, code


def loader(root, rank=0, world=1, **stream) -> PatchedWindowLoader:
    stream = {"shuffle_buffer": 8, **stream}
    return PatchedWindowLoader(LoaderConfig(root, seq_len=32, batch_size=2, rank=rank, world_size=world,
                                            prefetch=2, stream=StreamConfig(**stream)))


def run(ld: PatchedWindowLoader, batches: int | None = None) -> tuple[list, list]:
    """(docs reported as (source, epoch, doc_id), batches) for ``batches`` batches, or until every source's
    epoch 0 is fully emitted by this rank."""
    docs, out = [], []
    it = iter(ld)
    try:
        while batches is None or len(out) < batches:
            if batches is None and min(ld.epochs().values()) >= 1:
                break
            batch = next(it)
            out.append(batch)
            docs.extend(zip(batch.doc_sources, batch.doc_epochs, batch.doc_ids))
    finally:
        it.close()
    return docs, out


def epoch0(docs: list) -> collections.Counter:
    return collections.Counter((s, d) for s, e, d in docs if e == 0)


def test_same_seed_same_order_new_epoch_new_order(three_shards):
    root, docs = three_shards
    a, _ = run(loader(root, seed=7), 330)
    b, _ = run(loader(root, seed=7), 330)
    c, _ = run(loader(root, seed=8), 330)
    assert a == b and a != c
    first = [d for s, e, d in a if e == 0]
    second = [d for s, e, d in a if e == 1]
    assert sorted(first) == sorted(docs) and len(first) == len(docs)  # one epoch: every document once
    assert second[:30] != first[:30]  # the next epoch is shuffled afresh
    sequential = [d for s, e, d in run(loader(root, shuffle=False), 60)[0]]
    assert sequential == sorted(docs, key=lambda d: (d.split("-")[0], int(d.split("-")[1])))[: len(sequential)]


def test_three_shards_eight_workers_cover_the_epoch_once(three_shards):
    root, docs = three_shards
    seen = collections.Counter()
    for rank in range(8):
        ld = loader(root, rank, 8)
        got, batches = run(ld)
        assert batches, f"rank {rank} got no batches"
        seen += epoch0(got)
    assert set(seen.values()) == {1} and {d for _, d in seen} == set(docs)


def _audit(root_or_stream, phases: list[tuple[int, list[int] | None]], names: list[str]) -> collections.Counter:
    """Run phases of (world size, batches per rank or None = until epoch 0 is done), each resumed from the
    previous phase's states; returns how often each epoch-0 document was reported."""
    seen, states, last_labels = collections.Counter(), None, None
    for world, counts in phases:
        new_states, new_last = [], []
        for rank in range(world):
            ld = root_or_stream(rank, world)
            if states is not None:
                ld.load_state_dicts(json.loads(json.dumps(states)))  # states travel as JSON
            got, batches = run(ld, None if counts is None else counts[rank])
            if last_labels is not None and rank < len(last_labels) and batches and last_labels[rank] is not None:
                # The tail of old rank `rank`'s last window opens new rank `rank`'s stream (carry hand-over).
                assert int(batches[0].tokens[0, 0]) == last_labels[rank]
            seen += epoch0(got)
            new_states.append(ld.state_dict())
            new_last.append(int(batches[-1].labels[-1, -1]) if batches else None)
        states, last_labels = new_states, new_last
    return seen


def test_elastic_resume_4_to_2_and_2_to_3_workers(three_shards):
    root, docs = three_shards
    make = lambda rank, world: loader(root, rank, world)  # noqa: E731
    seen = _audit(make, [(4, [9, 14, 3, 11]), (2, None)], ["a"])
    assert set(seen.values()) == {1} and {d for _, d in seen} == set(docs)
    seen = _audit(make, [(2, [17, 6]), (3, None)], ["a"])
    assert set(seen.values()) == {1} and {d for _, d in seen} == set(docs)
    seen = _audit(make, [(4, [5, 8, 13, 2]), (2, [7, 19]), (3, None)], ["a"])  # resumed twice
    assert set(seen.values()) == {1} and {d for _, d in seen} == set(docs)


def test_elastic_resume_with_mixing(two_datasets):
    web, code, web_docs, code_docs = two_datasets
    mix = [SourceSpec(web, 0.6, name="web"), SourceSpec(code, 0.4, name="code")]

    def make(rank, world):
        return PatchedWindowLoader(LoaderConfig(None, seq_len=32, batch_size=2, rank=rank, world_size=world,
                                                prefetch=2, stream=StreamConfig(mix=mix, shuffle_buffer=8)))

    seen = _audit(make, [(4, [9, 14, 3, 11]), (2, None)], ["web", "code"])
    expected = {("web", d) for d in web_docs} | {("code", d) for d in code_docs}
    assert set(seen.values()) == {1} and set(seen) == expected


def test_same_world_size_replays_batch_for_batch(two_datasets):
    web, code, _, _ = two_datasets
    mix = [SourceSpec(web, 0.5, name="web"), SourceSpec(code, 0.5, name="code")]

    def make(rank):
        return PatchedWindowLoader(LoaderConfig(None, seq_len=48, batch_size=3, rank=rank, world_size=2,
                                                stream=StreamConfig(mix=mix, shuffle_buffer=16, seed=5)))

    total, cut = 120, 37  # past the end of the small sources' first epochs
    reference = list(itertools.islice(iter(make(1)), total))
    states = []
    for rank in range(2):
        first = make(rank)
        run(first, cut)
        states.append(json.loads(json.dumps(first.state_dict())))
    resumed = make(1)
    resumed.load_state_dicts(states)
    tail = list(itertools.islice(iter(resumed), total - cut))
    for want, got in zip(reference[cut:], tail, strict=True):
        assert torch.equal(want.tokens, got.tokens)
        assert torch.equal(want.patch_lengths, got.patch_lengths)
        assert want.doc_ids == got.doc_ids
    assert max(resumed.state_dict()["sources"][1]["base"] + resumed.state_dict()["sources"][1]["taken"], 0) > 0


def test_resume_refuses_another_stream(three_shards):
    root, _ = three_shards
    state = loader(root, seed=1).state_dict()
    with pytest.raises(ValueError, match="another stream"):
        loader(root, seed=2).load_state_dicts([state])


def test_elastic_resume_from_s3(bucket):
    """The same audit with shards on S3 (moto): block reads, read-ahead and footers through s3fs."""
    root = f"{bucket}/ds"
    docs = write_dataset(root, corpus("s", 3, 25, seed=9), batch_rows=6)
    make = lambda rank, world: loader(root, rank, world)  # noqa: E731
    seen = _audit(make, [(3, [6, 2, 9]), (2, None)], ["s"])
    assert set(seen.values()) == {1} and {d for _, d in seen} == set(docs)


def test_exact_replay_after_a_re_deal(three_shards):
    """A run resumed on another world size, checkpointed again and resumed on the same one, replays exactly."""
    root, _ = three_shards
    old = []
    for rank in range(4):
        ld = loader(root, rank, 4)
        run(ld, [4, 9, 2, 6][rank])
        old.append(ld.state_dict())

    def resumed(rank, states):
        ld = loader(root, rank, 2)
        ld.load_state_dicts(json.loads(json.dumps(states)))
        return ld

    reference = list(itertools.islice(iter(resumed(1, old)), 60))
    mid = []
    for rank in range(2):
        ld = resumed(rank, old)
        run(ld, 25)
        mid.append(ld.state_dict())
    tail = list(itertools.islice(iter(resumed(1, mid)), 35))
    for want, got in zip(reference[25:], tail, strict=True):
        assert torch.equal(want.tokens, got.tokens) and want.doc_ids == got.doc_ids
