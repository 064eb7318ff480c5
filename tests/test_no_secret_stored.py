"""No credential is ever stored: preprocess, repatch, stats and train run on the moto S3 server (and Ray) with
AWS credentials in the environment, then every object in the bucket and every local file the jobs wrote, plus
their console output, is searched for the access key id and the secret: zero hits."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from corpus import jsonl_bytes, make_docs, save_tiny_entropy_model, write_object

from jobs.preprocess import main as preprocess_main
from jobs.repatch import main as repatch_main
from jobs.stats import main as stats_main
from jobs.train import main as train_main


@pytest.mark.timeout(300)
def test_no_job_stores_the_credentials(bucket, ray_cluster, s3_endpoint, tmp_path, capfd, monkeypatch):
    key_id, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    assert len(key_id) >= 16 and len(secret) >= 30  # distinctive: a hit cannot be a coincidence
    monkeypatch.setenv("BLT_PROGRESS", "0")
    for shard in range(2):
        write_object(f"{bucket}/raw/s{shard}.jsonl", jsonl_bytes(make_docs(40 + shard, 30)))
    save_tiny_entropy_model(f"{bucket}/em")
    ds, local_ds, run = f"{bucket}/ds", str(tmp_path / "ds"), f"{bucket}/run"
    for output in (ds, local_ds):
        assert preprocess_main(["--inputs", f"{bucket}/raw/*.jsonl", "--output", output, "--entropy-model",
                                f"{bucket}/em", "--span", "256", "--num-workers", "1"]) == 0
    assert repatch_main([ds, "--target-avg-patch-size", "4.0"]) == 0
    assert stats_main([ds]) == 0
    assert stats_main([local_ds, "--no-ray"]) == 0
    assert train_main(["--dataset", ds, "--output", run, "--steps", "3", "--seq-len", "64", "--batch-size", "2",
                       "--log-every", "1", "--checkpoint.every", "2", "--num-workers", "1", "--warmup-steps", "1",
                       "--max-failures", "0"]) == 0
    local_run = str(tmp_path / "run")
    assert train_main(["--dataset", local_ds, "--output", local_run, "--steps", "2", "--seq-len", "64",
                       "--batch-size", "2", "--checkpoint.every", "1", "--no-export-hf", "--no-ray"]) == 0
    out, err = capfd.readouterr()

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    name = bucket.removeprefix("s3://")
    written: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            written[f"{bucket}/{obj['Key']}"] = s3.get_object(Bucket=name, Key=obj["Key"])["Body"].read()
    for path in Path(tmp_path).rglob("*"):
        if path.is_file():
            written[str(path)] = path.read_bytes()
    written["<stdout>"], written["<stderr>"] = out.encode(), err.encode()
    kinds = {k.rsplit("/", 1)[-1].rsplit(".", 1)[-1] for k in written}
    assert {"json", "arrow", "jsonl", "html", "distcp"} <= kinds, kinds  # manifest, shards, metrics, dashboard, ckpt
    assert any(k.endswith("/checkpoints/latest.json") for k in written)
    assert any("/run/ray/" in k for k in written)  # Ray Train's run state
    hits = sorted(k for k, data in written.items() if key_id.encode() in data or secret.encode() in data)
    assert not hits, f"credentials stored in {hits}"
    assert len(written) > 40
