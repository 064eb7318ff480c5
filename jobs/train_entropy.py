"""``blt train-entropy`` / ``python -m jobs.train_entropy``: train the byte-level entropy model on raw shards.

Every field of ``training.config.EntropyTrainConfig`` is a flag and a YAML key (``--config job.yaml``)."""

from __future__ import annotations

import argparse
import json

from pipeline.io import ray_runtime
from pipeline.io.logs import setup_logging
from training.config import EntropyTrainConfig
from training.entropy_loop import check_config, run_entropy_training

from .common import dataclass_parser, parse_config, run_main

CONFIG = EntropyTrainConfig  # the schema: flags, help and YAML keys


def build_parser() -> argparse.ArgumentParser:
    parser = dataclass_parser(EntropyTrainConfig, "blt train-entropy", __doc__)
    parser.add_argument("--no-ray", action="store_true", help="train in this process (one worker)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg, args = parse_config(parser, EntropyTrainConfig, argv)

    def body() -> int:
        setup_logging()
        check_config(cfg)  # before a cluster starts: a deterministic error is one line, never retried
        if not args.no_ray:
            ray_runtime.connect()
        last = run_entropy_training(cfg, use_ray=not args.no_ray)
        print(json.dumps({"entropy_model": cfg.output, "metrics": f"{cfg.output.rstrip('/')}/metrics", "last": last}))
        return 0

    return run_main("train-entropy", body)


if __name__ == "__main__":
    raise SystemExit(main())
