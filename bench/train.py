"""Benchmark: trainer throughput with the real loader vs synthetic in-memory batches, and loader-only speed.

Prints one table: training bytes/s fed by the streaming loader (data-wait fraction) and by pre-built batches,
and the loader alone reading pre-patched shards (from a local path, or from an S3 server on loopback with
--s3). Goals from the issue: data wait < 5 %, loader >= 20x what the trainer consumes.
Usage: python bench/train.py [--mbytes 2 --seq-len 1024 --batch 8 --steps 20 --preset tiny] [--s3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from preprocess import write_stored_entropies  # noqa: E402

from blt_model import ByteLatentTransformer  # noqa: E402
from blt_model.patching import PatchingParams  # noqa: E402
from blt_model.presets import blt_preset  # noqa: E402
from pipeline.preprocess.repatch import RepatchConfig, run_repatch  # noqa: E402
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader  # noqa: E402


def s3_root(prefix: str = "ds") -> tuple[str, object]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = random.randint(20000, 40000)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    boto3.client("s3").create_bucket(Bucket="bench")
    return f"s3://bench/{prefix}", server


def one_epoch_rate(loader: PatchedWindowLoader) -> float:
    """Bytes/s of the loader alone over one epoch of its shards."""
    count, started = 0, time.perf_counter()
    for batch in loader:
        if loader.state_dict()["epoch"] >= 1:
            break
        count += batch.tokens.numel()
    return count / (time.perf_counter() - started)


def train_steps(model, batches, steps: int) -> tuple[float, float]:
    """(bytes/s, data-wait fraction) over ``steps`` optimizer steps pulling from ``batches``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter(batches)
    waited, nbytes = 0.0, 0
    started = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - t0
        loss = model(batch.tokens, batch.patch_lengths, batch.labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        nbytes += batch.tokens.numel()
    elapsed = time.perf_counter() - started
    return nbytes / elapsed, waited / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mbytes", type=float, default=4.0)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--s3", action="store_true", help="read shards from a moto S3 server on 127.0.0.1")
    args = parser.parse_args()
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "ds")
        if args.s3:
            root, server = s3_root()
        write_stored_entropies(root, args.mbytes, 4)
        run_repatch(RepatchConfig(root, PatchingParams(threshold=1.5), set_default=True, use_ray=False))
        cfg = LoaderConfig(root, seq_len=args.seq_len, batch_size=args.batch)
        warm = list(itertools.islice(iter(PatchedWindowLoader(cfg)), 2))
        loader_rate = one_epoch_rate(PatchedWindowLoader(cfg))
        torch.manual_seed(0)
        model = ByteLatentTransformer(blt_preset(args.preset))
        train_steps(model, warm * 2, 2)  # warm-up
        real_rate, real_wait = train_steps(model, PatchedWindowLoader(cfg), args.steps)
        synthetic = list(itertools.islice(iter(PatchedWindowLoader(cfg)), args.steps))
        synth_rate, synth_wait = train_steps(model, synthetic, args.steps)
    if server is not None:
        server.stop()
    source = "S3 (moto on 127.0.0.1)" if args.s3 else "local files"
    print(f"preset {args.preset}, batch {args.batch} x {args.seq_len} bytes, {args.steps} steps, shards from {source}")
    print(f"{'workload':36s} {'bytes/s':>12s} {'data wait':>10s}")
    print(f"{'train, streaming loader':36s} {real_rate:12.0f} {real_wait:9.1%}")
    print(f"{'train, synthetic in-memory batches':36s} {synth_rate:12.0f} {synth_wait:9.1%}")
    print(f"{'loader only (one epoch)':36s} {loader_rate:12.0f} {'':>10s}")
    print(json.dumps({"loader_vs_trainer": loader_rate / real_rate}))


if __name__ == "__main__":
    main()
