"""``blt study`` / ``python -m jobs.study``: patching schemes compared at equal training FLOPs (held-out
bits/byte per source), from raw text or an existing dataset. Writes study.json, study.md and study.html.

Every field of ``training.study.StudyConfig`` is a flag and a YAML key (``--config study.yaml``)."""

from __future__ import annotations

import argparse
import json

from pipeline import ray_runtime
from pipeline.logs import setup_logging

from .common import dataclass_parser, parse_config, run_main


def build_parser() -> argparse.ArgumentParser:
    from training.study import StudyConfig

    parser = dataclass_parser(StudyConfig, "blt study", __doc__)
    parser.add_argument("--no-ray", action="store_true", help="run every stage in this process")
    return parser


def main(argv: list[str] | None = None) -> int:
    from training.study import StudyConfig, run_study

    parser = build_parser()

    def body() -> int:
        cfg, args = parse_config(parser, StudyConfig, argv)
        setup_logging()
        if not args.no_ray:
            ray_runtime.connect()
        study = run_study(cfg, use_ray=not args.no_ray)
        out = cfg.output.rstrip("/")
        print(json.dumps({"study": f"{out}/study.json", "table": f"{out}/study.md", "plot": f"{out}/study.html",
                          "arms": {a["name"]: a["final"].get("val_bits_per_byte") for a in study["arms"]}}))
        return 0

    return run_main("study", body)


if __name__ == "__main__":
    raise SystemExit(main())
