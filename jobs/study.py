"""``blt study`` / ``python -m jobs.study``: patching schemes compared at equal training FLOPs (held-out
bits/byte per source), from raw text or an existing dataset. Writes study.json, study.md and study.html.

Every field of ``training.study.StudyConfig`` is a flag and a YAML key (``--config study.yaml``)."""

from __future__ import annotations

import json

from pipeline.io import ray_runtime
from pipeline.io.logs import setup_logging
from training.study import StudyConfig, run_study

from .common import dataclass_parser, parse_config, run_main

CONFIG = StudyConfig  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(StudyConfig, "blt study", __doc__, aliases={"ray": "use_ray"})


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(build_parser(), StudyConfig, argv)

    def body() -> int:
        setup_logging()
        if cfg.use_ray:
            ray_runtime.connect()
        study = run_study(cfg)
        out = cfg.output.rstrip("/")
        print(json.dumps({"study": f"{out}/study.json", "table": f"{out}/study.md", "plot": f"{out}/study.html",
                          "arms": {a["name"]: a["final"].get("val_bits_per_byte") for a in study["arms"]}}))
        return 0

    return run_main("study", body)


if __name__ == "__main__":
    raise SystemExit(main())
