"""Entropy-model training data: work units inside files, any worker count, seeded shuffle, re-deal on resume,
and deterministic errors that fail at once with one line (no Ray Train restarts)."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from corpus import jsonl_bytes, make_docs, write_object

from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents
from training.entropy_data import EntropyStream, is_validation, plan_entropy_units

READER = ReaderConfig()
VAL, SEED = 0.1, 3


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    write_object(str(root / "all.jsonl"), jsonl_bytes(make_docs(7, 200)))
    return str(root / "all.jsonl")


def _training_docs(url: str) -> Counter:
    docs = read_documents(url, READER, SkipLog())
    return Counter(d.data for d in docs if d.data and not is_validation(d.doc_id, VAL, SEED))


def _stream(units, rank: int, world: int) -> EntropyStream:
    return EntropyStream(units, READER, 32, 2, VAL, SEED, rank, world)


def _epoch0(stream: EntropyStream, limit: int | None = None) -> list[bytes]:
    """Documents this rank reads in epoch 0 (positions < number of units), at most ``limit``; the stream's state
    afterwards is the position after them."""
    state, out = stream.state, []
    if limit == 0:
        return out
    for _, tokens in stream._documents(state):
        if state["queue"][0][0] >= len(stream.units):
            break
        out.append(bytes((tokens - 4).astype("uint8").tolist()))
        if limit is not None and len(out) >= limit:
            break
    return out


def test_two_workers_on_one_file_read_disjoint_halves_in_a_seeded_order(one_file):
    units = plan_entropy_units(one_file, READER)
    assert len(units) >= 8 and {u.kind for u in units} == {"bytes"}  # one file, many byte ranges
    assert plan_entropy_units(one_file, READER) == units  # the plan never depends on the worker count
    ranks = [_epoch0(_stream(units, r, 2)) for r in range(2)]
    assert ranks[0] and ranks[1]
    assert Counter(ranks[0]) + Counter(ranks[1]) == _training_docs(one_file)
    assert _epoch0(_stream(units, 0, 2)) == ranks[0]  # seeded: the same order every run
    other = EntropyStream(units, READER, 32, 2, VAL, SEED + 1, 0, 2)
    assert _epoch0(other) != ranks[0]  # another seed, another order
    batches = list(zip(range(3), iter(_stream(units, 1, 2))))
    assert all(t.shape == (2, 33) for _, (t, _) in batches)


@pytest.mark.parametrize("old_world,new_world", [(2, 1), (2, 3), (3, 2)])
def test_resume_on_another_worker_count_reads_every_document_once(one_file, old_world, new_world):
    units = plan_entropy_units(one_file, READER)
    old = [_stream(units, r, old_world) for r in range(old_world)]
    read = [doc for r, s in enumerate(old) for doc in _epoch0(s, limit=5 + 7 * r)]
    states = [s.state_dict() for s in old]
    json.dumps(states)  # what goes into rank-N.json
    for r in range(new_world):
        resumed = _stream(units, r, new_world)
        resumed.load_state_dicts(states)
        read += _epoch0(resumed)
    assert Counter(read) == _training_docs(one_file)


def test_carried_tokens_move_whole_with_segments_kept_apart(one_file):
    units = plan_entropy_units(one_file, READER)
    old = [_stream(units, r, 2) for r in range(2)]
    for s in old:
        next(iter(s))
    carried = [len(s.state["tokens"]) for s in old]
    resumed = _stream(units, 0, 1)
    resumed.load_state_dicts([s.state_dict() for s in old])
    assert len(resumed.state["tokens"]) == sum(carried)
    segments = resumed.state["segments"]
    boundary = carried[0]
    if carried[0] and carried[1]:
        assert segments[boundary - 1] != segments[boundary]  # two ranks' documents never share a segment id
    assert resumed.state["segment"] == max(segments)


@pytest.mark.timeout(300)
def test_two_workers_train_on_one_jsonl_file_then_resume_on_one(one_file, tmp_path, ray_cluster):
    from jobs.train_entropy import main
    from training.metrics import read_metrics

    out = str(tmp_path / "em")
    common = ["--inputs", one_file, "--output", out, "--steps", "4", "--seq-len", "32", "--batch-size", "2",
              "--log-every", "1", "--checkpoint.every", "2", "--max-failures", "0", "--val-fraction", "0.1"]
    assert main([*common, "--num-workers", "2", "--stop-after", "2"]) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert main([*common, "--num-workers", "1"]) == 0  # the 2-worker checkpoint resumes on 1 worker
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "em" / "config.json").read_text())["id"]


@pytest.mark.parametrize("case", ["empty", "bad_flag", "all_validation"])
def test_deterministic_errors_fail_at_once_with_one_line(case, tmp_path, capsys):
    from jobs.train_entropy import main

    raw = tmp_path / "raw.jsonl"
    docs = [{"id": str(i), "text": ""} for i in range(5)] if case == "empty" else make_docs(1, 5)
    write_object(str(raw), jsonl_bytes(docs))
    argv = ["--inputs", str(raw), "--output", str(tmp_path / "em"), "--steps", "2", "--seq-len", "32",
            "--num-workers", "2", "--max-failures", "3"]
    argv += {"empty": [], "bad_flag": ["--batch-size", "0"], "all_validation": ["--val-fraction", "0.99999"]}[case]
    started = time.perf_counter()
    assert main(argv) == 1
    assert time.perf_counter() - started < 10  # no worker started, nothing retried
    # Ray's own log forwarding from the session cluster's other actors may interleave; the job says one line.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("\x1b[36m(")]
    assert len(err) == 1 and err[0].startswith("train-entropy: error:"), err
    assert {"empty": "no training documents", "bad_flag": "--batch-size must be at least 1",
            "all_validation": "no training documents"}[case] in err[0]
