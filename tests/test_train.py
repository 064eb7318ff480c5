"""BLT and entropy-model training on Ray Train: 2 CPU workers (gloo) on loopback; S3 outputs, sharded DCP
checkpoints, automatic recovery from a killed worker, DDP -> FSDP2 resharding, sparse hash gradients."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from pipeline.io.storage import join, read_bytes
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from training.blt_loop import run_training
from training.config import EntropyTrainConfig, TrainConfig
from training.entropy_loop import run_entropy_training
from training.metrics import read_metrics

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _write_raw(root: str) -> None:
    for shard in range(5):
        write_object(f"{root}/raw/s{shard}.jsonl.zst", jsonl_bytes(make_docs(20 + shard, 50)), "zstd")


def _preprocess(root: str) -> str:
    save_tiny_entropy_model(f"{root}/em")
    run_preprocess(PreprocessConfig(inputs=f"{root}/raw/*.jsonl.zst", output=f"{root}/ds",
                                    entropy_model=f"{root}/em", span=512, use_ray=False))
    return f"{root}/ds"


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "raw").mkdir()
    root = str(root)
    _write_raw(root)
    return _preprocess(root)


COMMON = dict(steps=8, seq_len=96, batch_size=3, log={"every": 1}, checkpoint={"every": 3, "keep": 2},
              cluster={"num_workers": 2}, export_hf=False)


@pytest.fixture(scope="module")
def reference(local_dataset, tmp_path_factory, ray_cluster):
    """An uninterrupted 2-worker DDP run: the loss curve the others must reproduce."""
    output = str(tmp_path_factory.mktemp("reference"))
    run_training(TrainConfig(dataset=local_dataset, output=output, **COMMON))
    return {r["step"]: r["loss"] for r in read_metrics(output)}


def test_two_workers_train_from_s3_on_disjoint_data(bucket, ray_cluster):
    _write_raw(bucket)
    dataset = _preprocess(bucket)
    output = f"{bucket}/run"
    cfg = TrainConfig(dataset=dataset, output=output, steps=30, seq_len=128, batch_size=4, log={"every": 5},
                      checkpoint={"every": 15}, val_shards=1, eval={"every": 15, "batches": 2},
                      cluster={"num_workers": 2}, audit_docs=True)
    last = run_training(cfg)
    records = read_metrics(output)
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    assert records[-1]["val_bits_per_byte"] < records[2]["val_bits_per_byte"]  # steps 30 vs 15
    for key in ("bits_per_byte", "bytes_per_s", "patches_per_s", "data_wait_fraction", "lr", "bytes_per_patch",
                "patches_per_sequence", "global_batch"):
        assert key in last
    assert last["global_batch"] == 8 and 1 < last["bytes_per_patch"] < 128
    assert last["patches_per_sequence"] * last["bytes_per_patch"] == pytest.approx(128, rel=1e-6)
    fs, _ = fsspec.core.url_to_fs(output)
    # Metrics are new objects per chunk on S3 (never one object rewritten); checkpoints are sharded per rank.
    parts = fs.ls(f"{output}/metrics".removeprefix("s3://"), detail=False)
    assert len(parts) >= 2 and all(p.endswith(".jsonl") for p in parts)
    step_dir = json.loads(read_bytes(f"{output}/checkpoints/latest.json"))["path"]
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(step_dir.removeprefix("s3://"), detail=False)}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "rank-00000.json", "rank-00001.json"} <= names
    seen = [set(json.loads(read_bytes(join(output, "audit", f"rank-{r:05d}.json")))) for r in range(2)]
    assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])
    assert not any(doc.startswith("s24-") for doc in seen[0] | seen[1])  # the held-out shard never trained
    fs, path = fsspec.core.url_to_fs(join(output, "hf"))
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(path)} == {"config.json", "model.safetensors"}


def test_killed_worker_recovers_onto_the_uninterrupted_loss_curve(local_dataset, reference, tmp_path):
    """Rank 1 SIGKILLs itself at step 5 (checkpoints at 3, 6): Ray Train restarts the workers, they resume from
    step 3 and the job finishes by itself with the uninterrupted run's losses."""
    output = str(tmp_path / "killed")
    run_training(TrainConfig(dataset=local_dataset, output=output, drills={"kill_at_step": 5}, **COMMON))
    assert (tmp_path / "killed" / "faults" / "killed-step-5").exists()
    resumed = {r["step"]: r["loss"] for r in read_metrics(output)}
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step
    # keep=2: only the last two committed checkpoints remain.
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*")) == [
        "step-00000006", "step-00000008"]


def test_ddp_checkpoint_resumes_under_fsdp2(local_dataset, reference, tmp_path):
    """A DDP run stopped at step 4 (checkpoint 3) continues with FSDP2: DCP reshards model and optimizer."""
    output = str(tmp_path / "fsdp")
    run_training(TrainConfig(dataset=local_dataset, output=output, drills={"stop_after": 4}, **COMMON))
    run_training(TrainConfig(dataset=local_dataset, output=output, fsdp=True, **{**COMMON, "export_hf": True}))
    fsdp = {r["step"]: r["loss"] for r in read_metrics(output)}
    assert sorted(fsdp) == list(range(1, 9))
    for step in range(1, 9):
        assert fsdp[step] == pytest.approx(reference[step], abs=1e-4), step
    assert (tmp_path / "fsdp" / "hf" / "model.safetensors").exists()


def test_checkpoint_of_two_workers_resumes_on_one(local_dataset, reference, tmp_path):
    """2 DDP workers stopped at step 4 (checkpoint 3) continue on 1 worker: DCP reshards model and optimizer by
    name, the loader re-deals both old ranks' unread work to the one rank, and the run finishes."""
    output = str(tmp_path / "elastic")
    run_training(TrainConfig(dataset=local_dataset, output=output, drills={"stop_after": 4}, **COMMON))
    run_training(TrainConfig(dataset=local_dataset, output=output, **{**COMMON, "cluster": {"num_workers": 1}}))
    losses = {r["step"]: r["loss"] for r in read_metrics(output)}
    assert sorted(losses) == list(range(1, 9))
    for step in (1, 2, 3):  # written by the 2-worker run: the uninterrupted curve
        assert losses[step] == pytest.approx(reference[step], abs=1e-5), step
    # Steps 4.. run on half the global batch (other windows), from the resharded step-3 weights and optimizer: the
    # loss carries on from the 2-worker curve instead of restarting from the untrained model's.
    assert all(abs(losses[s] - reference[s]) < 0.5 * (reference[1] - reference[8]) for s in range(4, 9))
    restored = json.loads(read_bytes(f"{output}/checkpoints/latest.json"))
    assert restored["step"] == 8 and restored["world_size"] == 1


def test_sparse_hash_grad_training_learns_and_resumes_exactly(local_dataset, tmp_path, ray_cluster):
    """Two DDP workers with the hash tables left out of DDP (sparse gradients synced by hand, SparseAdam): the loss
    falls, and a run stopped between checkpoints resumes onto the uninterrupted loss curve."""
    common = dict(dataset=local_dataset, steps=6, seq_len=96, batch_size=3, log={"every": 1}, checkpoint={"every": 2},
                  cluster={"num_workers": 2}, sparse_hash_grad=True, optim={"lr": 1e-2})
    run_training(TrainConfig(output=str(tmp_path / "straight"), export_hf=False, **common))
    run_training(TrainConfig(output=str(tmp_path / "interrupted"), drills={"stop_after": 3}, export_hf=False, **common))
    run_training(TrainConfig(output=str(tmp_path / "interrupted"), **common))  # resumes from step 2
    straight = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "straight"))}
    resumed = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "interrupted"))}
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    assert straight[6] < 0.8 * straight[1]
    assert (tmp_path / "interrupted" / "hf" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="resume with the same setting"):
        run_training(TrainConfig(output=str(tmp_path / "interrupted"), export_hf=False,
                                 **{**common, "steps": 10, "sparse_hash_grad": False, "cluster": {"num_workers": 1}}),
                     use_ray=False)


def test_sparse_hash_grad_refuses_fsdp():
    with pytest.raises(ValueError, match="not FSDP2"):
        TrainConfig(dataset="x", output="y", fsdp=True, sparse_hash_grad=True)


def test_entropy_model_training_recovers_from_a_killed_worker_then_preprocess_uses_it(tmp_path, ray_cluster):
    """2 workers stream raw shards; rank 1 is killed at step 7 (checkpoint at 5); the restarted job's loss curve
    equals an uninterrupted run's, and its output is what preprocessing loads by URL."""
    import subprocess
    import sys

    from jobs.train_entropy import main
    from pipeline.dataset.model_store import entropy_model_id

    (tmp_path / "raw").mkdir()
    for shard in range(2):
        write_object(str(tmp_path / "raw" / f"s{shard}.jsonl"), jsonl_bytes(make_docs(40 + shard, 60)))
    inputs = str(tmp_path / "raw" / "*.jsonl")
    common = dict(inputs=inputs, steps=12, seq_len=64, batch_size=4, log={"every": 1},
                  eval={"every": 6, "validation_fraction": 0.1}, checkpoint={"every": 5}, cluster={"num_workers": 2})
    run_entropy_training(EntropyTrainConfig(output=str(tmp_path / "straight"), **common))
    assert main(["--inputs", inputs, "--output", str(tmp_path / "em"), "--steps", "12", "--seq-len", "64",
                 "--batch-size", "4", "--log-every", "1", "--eval-every", "6", "--checkpoint.every", "5",
                 "--num-workers", "2", "--val-fraction", "0.1", "--kill-at-step", "7"]) == 0
    assert (tmp_path / "em" / "faults" / "killed-step-7").exists()
    straight = {r["step"]: r for r in read_metrics(str(tmp_path / "straight"))}
    killed = {r["step"]: r for r in read_metrics(str(tmp_path / "em"))}
    assert sorted(killed) == list(range(1, 13))
    for step in range(1, 13):
        assert killed[step]["loss"] == pytest.approx(straight[step]["loss"], abs=1e-5), step
    assert killed[12]["val_bits_per_byte"] == pytest.approx(straight[12]["val_bits_per_byte"], abs=1e-5)
    assert killed[12]["bits_per_byte"] < 8.0 and killed[12]["val_bits_per_byte"] < 8.0  # below uniform
    config = json.loads((tmp_path / "em" / "config.json").read_text())
    assert config["id"] == entropy_model_id(str(tmp_path / "em"))
    manifest = run_preprocess(PreprocessConfig(inputs=inputs, output=str(tmp_path / "ds"),
                                               entropy_model=str(tmp_path / "em"), use_ray=False))
    assert manifest.entropy_model["id"] == config["id"]
    assert torch.isfinite(torch.tensor(straight[12]["loss"]))
    bad = subprocess.run([sys.executable, "-m", "jobs.train_entropy", "--inputs", str(tmp_path / "none/*.jsonl"),
                          "--output", str(tmp_path / "x"), "--no-ray"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no input objects match" in bad.stderr
