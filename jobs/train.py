"""``blt train`` / ``python -m jobs.train``: BLT training on Ray Train over a preprocessed dataset.

Every field of ``training.config.TrainConfig`` is a flag and a YAML key (``--config job.yaml``)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.io import ray_runtime
from pipeline.io.logs import setup_logging
from pipeline.stream.mixing import parse_mix
from training.blt_loop import run_training
from training.config import TrainConfig

from .common import dataclass_parser, parse_config, run_main

CONFIG = TrainConfig  # the schema: flags, help and YAML keys


def build_parser() -> argparse.ArgumentParser:
    parser = dataclass_parser(TrainConfig, "blt train", __doc__)
    parser.add_argument("--no-ray", action="store_true", help="train in this process (one worker)")
    parser.add_argument("--mix", action="append", default=None, metavar="DATASET[#PATTERN,...][=WEIGHT]",
                        help="a weighted source (repeatable); sets stream.mix, and --dataset defaults to the first")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    mix = parse_mix(parser.parse_known_args(argv)[0].mix or [])
    if mix and not any(a == "--dataset" or a.startswith("--dataset=") for a in argv):
        argv += ["--dataset", mix[0].dataset]
    cfg, args = parse_config(parser, TrainConfig, argv)
    if mix:
        cfg.stream.mix = mix
        cfg.__post_init__()

    def body() -> int:
        setup_logging()
        if not args.no_ray:
            ray_runtime.connect()
        last = run_training(cfg, use_ray=not args.no_ray)
        out = cfg.output.rstrip("/")
        print(json.dumps({"output": cfg.output, "metrics": f"{out}/metrics", "checkpoints": f"{out}/checkpoints",
                          "hf_export": f"{out}/hf" if cfg.export_hf else None, "last": last}))
        return 0

    return run_main("train", body)


if __name__ == "__main__":
    raise SystemExit(main())
