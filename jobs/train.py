"""``blt train`` / ``python -m jobs.train``: BLT training on Ray Train over a preprocessed dataset."""

from __future__ import annotations

import argparse
import json

from pipeline import ray_runtime
from pipeline.trainer import TrainConfig, run_training

from .common import add_config_flag, parse_with_config, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt train", description=__doc__)
    add_config_flag(parser)
    parser.add_argument("--dataset", help="dataset root URL (manifest.json)")
    parser.add_argument("--output", help="run URL: checkpoints/, metrics.jsonl, hf/")
    parser.add_argument("--patch-set", default=None, help="patch set key (default: the dataset's default)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "blt-1b"])
    parser.add_argument("--model-overrides", type=json.loads, default={},
                        help='JSON of BltConfig fields, e.g. \'{"global_config": {"num_hidden_layers": 4}}\'')
    for name, default, kind in (("seq-len", 512, int), ("batch-size", 4, int), ("steps", 100, int),
                                ("lr", 3e-3, float), ("warmup-steps", 10, int), ("weight-decay", 0.1, float),
                                ("log-every", 10, int), ("checkpoint-every", 50, int), ("val-shards", 0, int),
                                ("eval-every", 50, int), ("eval-batches", 4, int), ("num-workers", 2, int),
                                ("cpus-per-worker", 1.0, float), ("seed", 0, int)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "flex", "eager"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP (large configs)")
    parser.add_argument("--sparse-hash-grad", action="store_true",
                        help="sparse gradients + SparseAdam for the hash n-gram tables (large hash vocabularies)")
    parser.add_argument("--no-export-hf", action="store_true")
    parser.add_argument("--no-ray", action="store_true", help="train in this process (one worker)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.dataset or not args.output:
        parser.error("--dataset and --output are required")

    def body() -> int:
        cfg = TrainConfig(
            dataset=args.dataset, output=args.output, patch_set=args.patch_set, preset=args.preset,
            model_overrides=args.model_overrides, seq_len=args.seq_len, batch_size=args.batch_size,
            steps=args.steps, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            log_every=args.log_every, checkpoint_every=args.checkpoint_every, val_shards=args.val_shards,
            eval_every=args.eval_every, eval_batches=args.eval_batches, num_workers=args.num_workers,
            cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu, precision=args.precision,
            attn_implementation=args.attn_implementation, compile=args.compile, fsdp=args.fsdp, seed=args.seed,
            export_hf=not args.no_export_hf, sparse_hash_grad=args.sparse_hash_grad,
        )
        if not args.no_ray:
            ray_runtime.connect()
        last = run_training(cfg, use_ray=not args.no_ray)
        print(json.dumps({"output": cfg.output, "metrics": f"{cfg.output.rstrip('/')}/metrics.jsonl",
                          "checkpoints": f"{cfg.output.rstrip('/')}/checkpoints",
                          "hf_export": f"{cfg.output.rstrip('/')}/hf" if cfg.export_hf else None, "last": last}))
        return 0

    return run_main("train", body)


if __name__ == "__main__":
    raise SystemExit(main())
