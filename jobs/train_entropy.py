"""``blt train-entropy`` / ``python -m jobs.train_entropy``: train the byte-level entropy model on raw shards."""

from __future__ import annotations

import argparse

from pipeline import ray_runtime
from pipeline.entropy_trainer import EntropyJobConfig, run_entropy_training
from pipeline.entropy_training import EntropyTrainConfig
from pipeline.readers import ReaderConfig

from .common import add_config_flag, parse_with_config, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt train-entropy", description=__doc__)
    add_config_flag(parser)
    parser.add_argument("--inputs", help="fsspec URL or glob of raw shards")
    parser.add_argument("--output", help="checkpoint URL (config.json + model.safetensors)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper", "hf"])
    for name, default, kind in (("seq-len", 256, int), ("batch-size", 8, int), ("steps", 200, int),
                                ("lr", 3e-3, float), ("warmup-steps", 20, int), ("seed", 0, int),
                                ("log-every", 25, int), ("num-workers", 1, int), ("cpus-per-worker", 1.0, float),
                                ("val-fraction", 0.05, float), ("max-bytes-per-worker", 64 << 20, int)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--id-field", default="id")
    parser.add_argument("--txt-mode", default="file", choices=["file", "line"])
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.inputs or not args.output:
        parser.error("--inputs and --output are required")

    def body() -> int:
        cfg = EntropyJobConfig(
            inputs=args.inputs, output=args.output, preset=args.preset,
            train=EntropyTrainConfig(seq_len=args.seq_len, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
                                     warmup_steps=args.warmup_steps, seed=args.seed, log_every=args.log_every),
            reader=ReaderConfig(args.text_field, args.id_field, args.txt_mode),
            max_bytes_per_worker=args.max_bytes_per_worker, val_fraction=args.val_fraction,
            num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu,
        )
        if not args.no_ray:
            ray_runtime.connect()
        run_entropy_training(cfg, use_ray=not args.no_ray)
        return 0

    return run_main("train-entropy", body)


if __name__ == "__main__":
    raise SystemExit(main())
