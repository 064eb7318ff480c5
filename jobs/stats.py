"""``blt stats`` / ``python -m jobs.stats``: dataset statistics with Ray -> stats.json + dashboard.html.

Sources (the per-source view) are the inputs' parent directories by default; ``--group-by file`` makes every
input file a source, and ``--source-pattern NAME=GLOB`` (repeatable, first match wins; a pattern without
``* ? [`` is a prefix) names groups of inputs, e.g. ``--source-pattern code='*/code/*'``.
"""

from __future__ import annotations

import argparse
import json

from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger, setup_logging
from pipeline.stats.aggregate import SourceGrouping, compute_stats, write_stats

from .common import add_config_flag, parse_with_config, run_main

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flag(parser)
    parser.add_argument("dataset", help="dataset root URL (holds manifest.json)")
    parser.add_argument("--source-pattern", action="append", default=None, metavar="[NAME=]GLOB",
                        help="inputs matching GLOB (or starting with a prefix) form source NAME; repeatable")
    parser.add_argument("--group-by", choices=["dir", "file"], default="dir",
                        help="sources for inputs no pattern matches: parent directory (default) or file")
    parser.add_argument("--no-examples", action="store_true", help="skip the example document per source")
    parser.add_argument("--num-workers", type=int, default=None, help="local Ray CPUs (ignored on a cluster)")
    parser.add_argument("--no-ray", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    patterns = [args.source_pattern] if isinstance(args.source_pattern, str) else args.source_pattern  # YAML: str or list
    try:
        grouping = SourceGrouping.parse(patterns, args.group_by)
    except ValueError as exc:
        parser.error(str(exc))

    def body() -> int:
        setup_logging()
        if not args.no_ray:
            ray_runtime.connect(args.num_workers)
        stats = compute_stats(args.dataset, use_ray=not args.no_ray, grouping=grouping,
                              examples=not args.no_examples)
        stats_url, html_url = write_stats(args.dataset, stats)
        log.info("dashboard: %s", html_url)
        print(json.dumps({"stats": stats_url, "dashboard": html_url, "totals": stats["totals"]}))
        return 0

    return run_main("stats", body)


if __name__ == "__main__":
    raise SystemExit(main())
