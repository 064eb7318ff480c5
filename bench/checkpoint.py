"""Benchmark: checkpoint save/load time and peak host memory per rank, old path (full state dict gathered on rank 0,
``torch.save`` into memory, one object; every rank unpickles it all at load) vs new (DCP: every rank writes and
reads only its own shards). 2 CPU ranks (gloo), FSDP2, AdamW state after one step.

Peak memory is the process RSS sampled every 2 ms during the operation, minus the RSS just before it (the model and
optimizer already held): what the checkpoint itself costs. Goal: new-path peak per rank ~ the rank's shard.
Usage: python bench/checkpoint.py [--preset small --hash-vocab 30011] [--s3]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict  # noqa: E402

from blt_model import ByteLatentTransformer  # noqa: E402
from blt_model.presets import blt_preset  # noqa: E402
from pipeline.io.storage import join, read_bytes, write_bytes_atomic  # noqa: E402
from training.checkpoint import Checkpointer  # noqa: E402
from training.config import CheckpointConfig  # noqa: E402
from training.optim import OptimizerSet  # noqa: E402
from training.parallelize import build_on_meta, fully_shard_model, materialize  # noqa: E402


class PeakRss:
    """Peak resident memory above the level at entry, sampled in a thread."""

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:  # Linux: resident pages
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self.peak = self.rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.started = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra = self.peak - self.base


def _build(args):
    cfg = blt_preset(args.preset, encoder_hash_byte_group_vocab=args.hash_vocab)
    model = build_on_meta(lambda: ByteLatentTransformer(cfg))
    fully_shard_model(model)
    materialize(model, torch.device("cpu"), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(4, 260, (1, 64))
    model(tokens, torch.full((1, 16), 4), tokens).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, [optimizer]


def _old_save(model, optimizers, url, rank):
    model_state, optim_state = get_state_dict(model, optimizers,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        buffer = io.BytesIO()
        torch.save({"model": model_state, "optimizer": optim_state}, buffer)
        write_bytes_atomic(url, buffer.getvalue())
    dist.barrier()


def _old_load(model, optimizers, url):
    state = torch.load(io.BytesIO(read_bytes(url)), map_location="cpu", weights_only=False)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))


def _rank(rank, world, port, args, root, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, optimizers = _build(args)
    local = sum(p.to_local().numel() for p in model.parameters())
    shard_bytes = local * 4 * 3  # fp32 weights + two AdamW moments held by this rank
    out = {"shard_mb": shard_bytes / 2**20}
    import gc

    for name in ("old", "new"):
        gc.collect()
        dist.barrier()
        output = join(root, name)
        with PeakRss() as save:
            if name == "old":
                _old_save(model, optimizers, join(output, "trainer.pt"), rank)
            else:
                Checkpointer(output, CheckpointConfig()).save(1, model, OptimizerSet(optimizers, lambda _: 1.0), {}, {})
        gc.collect()
        dist.barrier()
        with PeakRss() as load:
            if name == "old":
                _old_load(model, optimizers, join(output, "trainer.pt"))
            else:
                Checkpointer(output, CheckpointConfig()).load(model, OptimizerSet(optimizers, lambda _: 1.0))
        dist.barrier()
        out[name] = (save.seconds, save.extra / 2**20, load.seconds, load.extra / 2**20)
    results[rank] = out
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--hash-vocab", type=int, default=30011)
    parser.add_argument("--s3", action="store_true", help="write to a moto S3 server on 127.0.0.1")
    args = parser.parse_args()
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        root = tmp
        if args.s3:
            from train import s3_root  # bench/train.py: moto on 127.0.0.1 with a "bench" bucket

            root, server = s3_root("ckpt")
        with torch.device("meta"):
            meta = ByteLatentTransformer(blt_preset(args.preset, encoder_hash_byte_group_vocab=args.hash_vocab))
        params = sum(p.numel() for p in meta.parameters())
        with mp.Manager() as manager:
            results = manager.dict()
            mp.start_processes(_rank, args=(2, random.randint(20000, 40000), args, root, results), nprocs=2,
                               start_method="spawn")
            results = dict(results)
    if server is not None:
        server.stop()
    print(f"preset {args.preset} (hash vocab {args.hash_vocab}): {params / 1e6:.0f}M parameters, "
          f"model+AdamW {params * 12 / 2**20:.0f} MiB; 2 ranks FSDP2 (gloo); storage {'S3 (moto)' if args.s3 else 'local disk'}")
    print(f"{'path':6s} {'rank':>4s} {'shard MiB':>10s} {'save s':>8s} {'save peak MiB':>14s} {'load s':>8s} "
          f"{'load peak MiB':>14s}")
    for name in ("old", "new"):
        for rank in (0, 1):
            save_s, save_mb, load_s, load_mb = results[rank][name]
            print(f"{name:6s} {rank:4d} {results[rank]['shard_mb']:10.0f} {save_s:8.2f} {save_mb:14.0f} {load_s:8.2f} "
                  f"{load_mb:14.0f}")


if __name__ == "__main__":
    main()
