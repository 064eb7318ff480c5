"""``blt repatch DATASET`` / ``python -m jobs.repatch``: a new patch set from stored entropies (no model).

Every field of ``pipeline.repatch.RepatchConfig`` is a flag and a YAML key."""

from __future__ import annotations

import json

from pipeline.io import ray_runtime
from pipeline.io.logs import setup_logging
from pipeline.preprocess.repatch import RepatchConfig, run_repatch

from .common import dataclass_parser, parse_config, run_main
from .preprocess import PATCHING_ALIASES, cli_patching

CONFIG = RepatchConfig  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(RepatchConfig, "blt repatch", __doc__, aliases={**PATCHING_ALIASES, "ray": "use_ray"},
                            positional=("dataset",))


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(build_parser(), RepatchConfig, argv)
    cfg.patching = cli_patching(cfg.patching)

    def body() -> int:
        setup_logging()
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
