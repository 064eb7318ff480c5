"""A deterministic error on the Ray Train workers ends the run after one attempt, with one line, whatever
``max_failures`` is; errors once training runs keep their retries; a new launch is not blocked by an old marker."""

from __future__ import annotations

import errno
import json
import time

import pytest
from corpus import TINY, jsonl_bytes, make_docs, write_object

from blt_model import EntropyModel
from training.checkpoint import Checkpointer
from training.config import CheckpointConfig, lr_lambda
from training.fatal import DeterministicError, GuardedLoop, end_setup, marker_url, raise_if_failed
from training.optim import OptimizerSet, build_optimizers


def _failing(exc: BaseException, after_setup: bool = False):
    calls = []

    def loop(config: dict) -> None:
        calls.append(config)
        if after_setup:
            end_setup()
        raise exc

    return loop, calls


def test_a_setup_error_is_recorded_once_and_ends_the_launch(tmp_path):
    marker = marker_url(str(tmp_path), "launch-1")
    loop, calls = _failing(ValueError("--seq-len does not fit\nsecond line"))
    with pytest.raises(ValueError):
        GuardedLoop(loop, marker)({"a": 1})
    message = json.loads((tmp_path / "ray" / "fatal-launch-1.json").read_text())["message"]
    assert message == "ValueError: --seq-len does not fit (rank 0 of 1, during set-up; not retried)"
    GuardedLoop(loop, marker)({"a": 2})  # the restarted attempt returns without running the loop
    assert calls == [{"a": 1}]
    with pytest.raises(DeterministicError, match=r"^ValueError: --seq-len does not fit \(rank 0"):
        raise_if_failed(marker)
    # A new launch (another id) runs.
    with pytest.raises(ValueError):
        GuardedLoop(loop, marker_url(str(tmp_path), "launch-2"))({"a": 3})
    assert len(calls) == 2


@pytest.mark.parametrize("exc, after_setup", [
    (RuntimeError("gloo connection reset"), False),  # not a set-up error type
    (ValueError("nan in the loss"), True),  # raised once training steps run
    (OSError(errno.ECONNRESET, "connection reset by peer"), False),  # transient storage error
])
def test_retryable_errors_leave_no_marker(tmp_path, exc, after_setup):
    marker = marker_url(str(tmp_path), "x")
    loop, calls = _failing(exc, after_setup)
    for _ in range(2):  # every attempt runs the loop again (Ray Train's retries)
        with pytest.raises(type(exc)):
            GuardedLoop(loop, marker)({})
    assert len(calls) == 2 and not (tmp_path / "ray").exists()
    raise_if_failed(marker)


def test_a_deterministic_error_class_is_fatal_during_training_too(tmp_path):
    marker = marker_url(str(tmp_path), "x")
    loop, _ = _failing(DeterministicError("no training documents in 64 units read in a row"), after_setup=True)
    with pytest.raises(DeterministicError):
        GuardedLoop(loop, marker)({})
    with pytest.raises(DeterministicError, match="during training; not retried"):
        raise_if_failed(marker)


def _other_models_checkpoint(output: str) -> None:
    """A committed step-1 checkpoint of a smaller entropy model (hidden 32; the `tiny` preset is 64 wide)."""
    model = EntropyModel(TINY)
    optim = OptimizerSet(build_optimizers(model, 1e-3, 0.0, sparse_hash_grad=False), lr_lambda(10, 1, 0.1))
    Checkpointer(output, CheckpointConfig()).save(1, model, optim, {"config": {}}, {"stream": {}})


def _attempts(run_name: str) -> list:
    """Ray Train's own record of the run's attempts (state tracking on), oldest first."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    runs = [r for r in ray.get(actor.get_train_runs.remote()).values() if r.name == run_name]
    assert len(runs) == 1, run_name
    attempts = ray.get(actor.get_train_run_attempts.remote())[runs[0].id].values()
    return sorted(attempts, key=lambda a: a.start_time_ns)


@pytest.mark.timeout(180)
def test_a_checkpoint_of_another_model_fails_the_job_at_once_with_one_line(tmp_path, ray_cluster, monkeypatch,
                                                                           capsys):
    """The driver's checks pass (inputs and flags are fine); each worker's restore hits a shape mismatch. With
    max_failures=3 the job ends after one failed attempt plus one that returns at once, and prints one line."""
    from jobs.train_entropy import main

    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    write_object(str(tmp_path / "raw" / "a.jsonl"), jsonl_bytes(make_docs(1, 40)))
    output = str(tmp_path / "run")
    _other_models_checkpoint(output)
    started = time.perf_counter()
    code = main(["--inputs", str(tmp_path / "raw" / "*.jsonl"), "--output", output, "--steps", "3", "--seq-len", "32",
                 "--batch-size", "2", "--cluster.num-workers", "2", "--cluster.max-failures", "3"])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    err = [line for line in err.splitlines() if line.startswith("train-entropy")]  # Ray's worker logs go there too
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("train-entropy: error: DeterministicError: CheckpointMismatchError: the checkpoint at ")
    assert "does not fit this run's model: Size mismatch" in err[0] and "during set-up; not retried" in err[0]

    markers = sorted((tmp_path / "run" / "ray").glob("fatal-*.json"))
    assert len(markers) == 1
    launch_id = markers[0].name.removeprefix("fatal-").removesuffix(".json")
    attempts = _attempts(f"blt-train-entropy-{launch_id}")
    # One attempt hit the error; the restart found the marker and ended; max_failures=3 would have made four.
    assert [a.status.value for a in attempts] == ["ERRORED", "FINISHED"], attempts
    assert "Size mismatch" in (attempts[0].status_detail or "")
    restart_s = (attempts[1].end_time_ns - attempts[1].start_time_ns) / 1e9
    failed_s = (attempts[0].end_time_ns - attempts[0].start_time_ns) / 1e9
    print(f"failed attempt {failed_s:.1f} s, returning restart {restart_s:.1f} s, job {elapsed:.1f} s")
    assert elapsed < 4 * failed_s  # what four failing attempts (max_failures=3) would at least take
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"] == 1
