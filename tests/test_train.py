"""BLT training on Ray Train: 2 CPU workers (gloo) on loopback, data from S3, resume, HF export."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from pipeline.preprocess import PreprocessConfig, run_preprocess
from pipeline.storage import join, read_bytes
from training.blt_loop import run_training
from training.config import TrainConfig
from training.metrics import read_metrics

pytestmark = pytest.mark.timeout(300)


def _metrics(output: str) -> list[dict]:
    return read_metrics(output)


@pytest.fixture
def s3_dataset(bucket):
    for shard in range(5):
        write_object(f"{bucket}/raw/s{shard}.jsonl.zst", jsonl_bytes(make_docs(20 + shard, 50)), "zstd")
    save_tiny_entropy_model(f"{bucket}/em")
    run_preprocess(PreprocessConfig(inputs=f"{bucket}/raw/*.jsonl.zst", output=f"{bucket}/ds",
                                    entropy_model=f"{bucket}/em", span=512, use_ray=False))
    return f"{bucket}/ds"


def test_two_workers_train_from_s3_on_disjoint_data(s3_dataset, bucket, ray_cluster):
    output = f"{bucket}/run"
    cfg = TrainConfig(dataset=s3_dataset, output=output, steps=30, seq_len=128, batch_size=4, log_every=5,
                      checkpoint={"every": 15}, val_shards=1, eval_every=15, eval_batches=2, num_workers=2,
                      audit_docs=True)
    last = run_training(cfg)
    records = _metrics(output)
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    assert records[-1]["val_bits_per_byte"] < records[2]["val_bits_per_byte"]  # steps 30 vs 15
    for key in ("bits_per_byte", "bytes_per_s", "patches_per_s", "data_wait_fraction", "lr"):
        assert key in last
    seen = [set(json.loads(read_bytes(join(output, "audit", f"rank-{r:05d}.json")))) for r in range(2)]
    assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])
    # The held-out shard never reached training.
    assert not any(doc.startswith("s24-") for doc in seen[0] | seen[1])
    # The final model was exported in HF format.
    fs, path = fsspec.core.url_to_fs(join(output, "hf"))
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(path)} == {"config.json", "model.safetensors"}


def test_resumed_run_repeats_the_uninterrupted_loss_curve(s3_dataset, bucket, ray_cluster):
    common = dict(dataset=s3_dataset, steps=12, seq_len=96, batch_size=3, log_every=1, checkpoint={"every": 4},
                  num_workers=2, export_hf=False)
    run_training(TrainConfig(output=f"{bucket}/straight", **common))
    # Stopped after step 6, between checkpoints (every 4): the resumed run restarts from step 4, replays 5-6.
    run_training(TrainConfig(output=f"{bucket}/interrupted", stop_after=6, **common))
    assert json.loads(read_bytes(f"{bucket}/interrupted/checkpoints/latest.json"))["step"] == 4
    run_training(TrainConfig(output=f"{bucket}/interrupted", **common))
    straight = {r["step"]: r["loss"] for r in _metrics(f"{bucket}/straight")}
    resumed = {r["step"]: r["loss"] for r in _metrics(f"{bucket}/interrupted")}
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    assert torch.isfinite(torch.tensor(straight[12]))


def test_entropy_model_training_job_then_preprocess_with_it(tmp_path, ray_cluster):
    """`python -m jobs.train_entropy` on 2 Ray workers writes a checkpoint that preprocessing loads by URL."""
    import subprocess
    import sys

    from pipeline.model_store import entropy_model_id

    (tmp_path / "raw").mkdir()
    for shard in range(2):
        write_object(str(tmp_path / "raw" / f"s{shard}.jsonl"), jsonl_bytes(make_docs(40 + shard, 60)))
    main_args = ["--inputs", str(tmp_path / "raw" / "*.jsonl"), "--output", str(tmp_path / "em"),
                 "--steps", "40", "--seq-len", "64", "--log-every", "10"]
    import ray

    from jobs.train_entropy import main

    assert ray.is_initialized()
    assert main(main_args + ["--num-workers", "2"]) == 0
    config = json.loads((tmp_path / "em" / "config.json").read_text())
    assert config["id"] == entropy_model_id(str(tmp_path / "em"))
    assert config["val_bits_per_byte"] < 8.0 and config["train_bits_per_byte"] < 8.0  # learned below uniform
    manifest = run_preprocess(PreprocessConfig(inputs=str(tmp_path / "raw" / "*.jsonl"), output=str(tmp_path / "ds"),
                                               entropy_model=str(tmp_path / "em"), use_ray=False))
    assert manifest.entropy_model["id"] == config["id"]
    bad = subprocess.run([sys.executable, "-m", "jobs.train_entropy", "--inputs", str(tmp_path / "none/*.jsonl"),
                          "--output", str(tmp_path / "x"), "--no-ray"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no input objects match" in bad.stderr


def test_fsdp2_matches_ddp_and_resumes(s3_dataset, bucket, ray_cluster):
    common = dict(dataset=s3_dataset, steps=6, seq_len=96, batch_size=3, log_every=1, checkpoint={"every": 3},
                  num_workers=2)
    run_training(TrainConfig(output=f"{bucket}/ddp", export_hf=False, **common))
    run_training(TrainConfig(output=f"{bucket}/fsdp", fsdp=True, stop_after=4, export_hf=False, **common))
    run_training(TrainConfig(output=f"{bucket}/fsdp", fsdp=True, **{**common, "export_hf": True}))  # from step 3
    ddp = {r["step"]: r["loss"] for r in _metrics(f"{bucket}/ddp")}
    fsdp = {r["step"]: r["loss"] for r in _metrics(f"{bucket}/fsdp")}
    assert sorted(fsdp) == list(range(1, 7))
    for step in range(1, 7):
        assert fsdp[step] == pytest.approx(ddp[step], abs=1e-4), step
    fs, path = fsspec.core.url_to_fs(join(f"{bucket}/fsdp", "hf"))
    assert fs.exists(path + "/model.safetensors")


def test_sparse_hash_grad_training_learns_and_resumes_exactly(s3_dataset, bucket, ray_cluster):
    """Two DDP workers with the hash tables left out of DDP (sparse gradients synced by hand, SparseAdam): the loss
    falls, and a run stopped between checkpoints resumes onto the uninterrupted loss curve (two optimizers and
    two LR schedulers in the checkpoint)."""
    common = dict(dataset=s3_dataset, steps=6, seq_len=96, batch_size=3, log_every=1, checkpoint={"every": 2},
                  num_workers=2, sparse_hash_grad=True, lr=1e-2)
    run_training(TrainConfig(output=f"{bucket}/straight", export_hf=False, **common))
    run_training(TrainConfig(output=f"{bucket}/interrupted", stop_after=3, export_hf=False, **common))
    run_training(TrainConfig(output=f"{bucket}/interrupted", **common))  # resumes from step 2
    straight = {r["step"]: r["loss"] for r in _metrics(f"{bucket}/straight")}
    resumed = {r["step"]: r["loss"] for r in _metrics(f"{bucket}/interrupted")}
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    assert straight[6] < 0.8 * straight[1]
    # The export still loads in HF format: sparse training changes nothing about the weights' layout.
    fs, path = fsspec.core.url_to_fs(join(f"{bucket}/interrupted", "hf"))
    assert fs.exists(path + "/model.safetensors")
    # Continuing that run with dense hash gradients is refused with a reason, not a state-dict traceback.
    with pytest.raises(ValueError, match="resume with the same setting"):
        run_training(TrainConfig(output=f"{bucket}/interrupted", export_hf=False,
                                 **{**common, "steps": 10, "sparse_hash_grad": False, "num_workers": 1}),
                     use_ray=False)


def test_sparse_hash_grad_refuses_fsdp():
    with pytest.raises(ValueError, match="not FSDP2"):
        TrainConfig(dataset="x", output="y", fsdp=True, sparse_hash_grad=True)
