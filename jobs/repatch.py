"""``blt repatch`` / ``python -m jobs.repatch``: a new patch set from stored entropies (no model)."""

from __future__ import annotations

import argparse
import json

from pipeline.io import ray_runtime
from pipeline.io.logs import setup_logging
from pipeline.preprocess.repatch import RepatchConfig, run_repatch

from .common import add_config_flag, parse_with_config, run_main
from .preprocess import add_patching_flags, patching_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt repatch", description=__doc__)
    add_config_flag(parser)
    parser.add_argument("dataset", help="dataset root URL (holds manifest.json)")
    add_patching_flags(parser)
    parser.add_argument("--target-avg-patch-size", type=float, default=None,
                        help="calibrate the threshold to this many bytes per patch")
    parser.add_argument("--set-default", action="store_true", help="make this the dataset's default patch set")
    parser.add_argument("--no-ray", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_with_config(build_parser(), argv)

    def body() -> int:
        setup_logging()
        cfg = RepatchConfig(args.dataset, patching_from_args(args), args.target_avg_patch_size,
                            args.set_default, use_ray=not args.no_ray)
        if cfg.use_ray:
            ray_runtime.connect()
        manifest, key = run_repatch(cfg)
        record = manifest.patch_sets[key]
        print(json.dumps({"manifest": manifest.url, "patch_set": key, "params": record.params,
                          "calibration": record.calibration, "totals": record.totals()}))
        return 0

    return run_main("repatch", body)


if __name__ == "__main__":
    raise SystemExit(main())
