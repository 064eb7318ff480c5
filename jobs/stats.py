"""``blt stats`` / ``python -m jobs.stats``: dataset statistics with Ray -> stats.json + dashboard.html."""

from __future__ import annotations

import argparse
import json

from pipeline import ray_runtime
from pipeline.stats import compute_stats, write_stats

from .common import add_config_flag, parse_with_config, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt stats", description=__doc__)
    add_config_flag(parser)
    parser.add_argument("dataset", help="dataset root URL (holds manifest.json)")
    parser.add_argument("--num-workers", type=int, default=None, help="local Ray CPUs (ignored on a cluster)")
    parser.add_argument("--no-ray", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_with_config(build_parser(), argv)

    def body() -> int:
        if not args.no_ray:
            ray_runtime.connect(args.num_workers)
        stats = compute_stats(args.dataset, use_ray=not args.no_ray)
        stats_url, html_url = write_stats(args.dataset, stats)
        print(json.dumps({"stats": stats_url, "dashboard": html_url, "totals": stats["totals"]}))
        return 0

    return run_main("stats", body)


if __name__ == "__main__":
    raise SystemExit(main())
