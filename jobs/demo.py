"""``blt demo``: the whole flow on the bundled sample corpus, locally.

Trains a tiny entropy model, preprocesses the sample with it on a local Ray cluster (entropies + a patch set
in Arrow, manifest), re-patches to a calibrated 4.5-byte average without the model, prints patch stats, then
trains a tiny BLT on the calibrated patch set with Ray Train and exports it in HF format.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from blt_model import EntropyModel, EntropyModelConfig
from blt_model.patching import PatchingParams
from pipeline import ray_runtime
from pipeline.entropy_training import EntropyTrainConfig, train_entropy_model
from pipeline.model_store import save_entropy_model
from pipeline.preprocess import PreprocessConfig, run_preprocess
from pipeline.readers import ReaderConfig, SkipLog, read_documents
from pipeline.repatch import RepatchConfig, run_repatch
from pipeline.shards import iter_batches
from pipeline.storage import join
from pipeline.trainer import TrainConfig, run_training

from .common import run_main

SAMPLE = Path(__file__).resolve().parent.parent / "pipeline" / "sample_data" / "sample.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt demo", description=__doc__)
    parser.add_argument("--workdir", default="out/demo")
    parser.add_argument("--inputs", default=str(SAMPLE))
    parser.add_argument("--steps", type=int, default=150, help="entropy model training steps")
    parser.add_argument("--target-avg-patch-size", type=float, default=4.5)
    parser.add_argument("--train-steps", type=int, default=40, help="BLT training steps (0 to skip)")
    parser.add_argument("--no-ray", action="store_true")
    return parser


def show_patches(data: bytes, lengths: list[int], limit: int = 160) -> str:
    pieces, pos = [], 0
    for length in lengths:
        if pos >= limit:
            break
        pieces.append(data[pos : pos + length].decode("utf-8", errors="replace"))
        pos += length
    return "|".join(pieces)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        workdir = os.path.abspath(args.workdir)
        torch.manual_seed(0)
        docs = [d.data for d in read_documents(args.inputs, ReaderConfig(), SkipLog())]
        model = EntropyModel(EntropyModelConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                                intermediate_size=128, sliding_window=64))
        print(f"[demo] training a tiny entropy model on {len(docs)} docs, {sum(map(len, docs))} bytes")
        history = train_entropy_model(model, docs, EntropyTrainConfig(steps=args.steps, seq_len=128, batch_size=8),
                                      on_log=lambda r: print(f"[demo]   step {r['step']:4d}  "
                                                             f"bpb {r['bits_per_byte']:.3f}  "
                                                             f"{r['bytes_per_s']:.0f} B/s"))
        model_url = join(workdir, "entropy_model")
        model_id = save_entropy_model(model, model_url, {"train_bits_per_byte": history[-1]["bits_per_byte"]})
        print(f"[demo] entropy model {model_id} -> {model_url}")
        if not args.no_ray:
            ray_runtime.connect(num_cpus=4)
        dataset = join(workdir, "dataset")
        manifest = run_preprocess(PreprocessConfig(inputs=args.inputs, output=dataset, entropy_model=model_url,
                                                   patching=PatchingParams(threshold=2.0), use_ray=not args.no_ray,
                                                   num_workers=1))
        manifest, key = run_repatch(RepatchConfig(dataset, PatchingParams(), args.target_avg_patch_size,
                                                  set_default=True, use_ray=not args.no_ray))
        print("[demo] patch sets:")
        for name, record in manifest.patch_sets.items():
            totals = record.totals()
            print(f"[demo]   {name:40s} threshold {record.params['threshold']:.4f}  patches {totals['patches']:6d}  "
                  f"avg patch size {totals['avg_patch_size']:.3f}")
        shard = next(iter(manifest.shards.values()))
        batch = next(iter_batches(join(dataset, shard.output), "entropies"))
        patches = next(iter_batches(join(dataset, manifest.patch_sets[key].shards[shard.input_url]["output"]),
                                    "patches"))
        row = max(range(batch.num_rows), key=lambda i: len(batch.column("bytes")[i].as_py()))
        print("[demo] example (| = patch boundary):")
        print("       " + show_patches(batch.column("bytes")[row].as_py(), patches.column("patch_lengths")[row].as_py()))
        result = {"manifest": manifest.url, "default_patch_set": key, "totals": manifest.totals()}
        if args.train_steps:
            run = join(workdir, "blt_run")
            last = run_training(TrainConfig(dataset=dataset, output=run, steps=args.train_steps, seq_len=256,
                                            batch_size=4, log_every=10, checkpoint_every=args.train_steps,
                                            num_workers=1), use_ray=not args.no_ray)
            print(f"[demo] BLT trained {args.train_steps} steps: bits/byte {last['bits_per_byte']:.3f}, "
                  f"{last['bytes_per_s']:.0f} bytes/s; HF export at {join(run, 'hf')}")
            result["training"] = {"output": run, "last": last}
        print(json.dumps(result))
        return 0

    return run_main("demo", body)


if __name__ == "__main__":
    raise SystemExit(main())
