"""``blt stats`` / ``python -m jobs.stats``: dataset statistics with Ray -> stats.json + dashboard.html.

Sources (the per-source view) are the inputs' parent directories by default; ``--group-by file`` makes every
input file a source, and ``--source-pattern NAME=GLOB`` (repeatable, first match wins; a pattern without
``* ? [`` is a prefix) names groups of inputs, e.g. ``--source-pattern code='*/code/*'``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger, setup_logging
from pipeline.stats.aggregate import SourceGrouping, compute_stats, write_stats

from .common import dataclass_parser, parse_config, run_main

log = get_logger(__name__)


@dataclass
class StatsJob:
    FLAG_ALIASES: ClassVar[dict[str, str]] = {"ray": "use_ray"}

    dataset: str  # dataset root URL (holds manifest.json)
    source_pattern: list[str] = field(default_factory=list)  # [NAME=]GLOB: matching inputs form source NAME
    group_by: str = "dir"  # sources for inputs no pattern matches: dir (parent directory) or file
    examples: bool = True  # an example document per source
    num_workers: int | None = None  # local Ray CPUs (ignored on a cluster)
    use_ray: bool = True

    def grouping(self) -> SourceGrouping:
        patterns = [self.source_pattern] if isinstance(self.source_pattern, str) else self.source_pattern  # YAML
        return SourceGrouping.parse(patterns, self.group_by)

    def __post_init__(self) -> None:
        self.grouping()  # a bad pattern or group_by is a usage error, before any work


CONFIG = StatsJob  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(StatsJob, "blt stats", __doc__, positional=("dataset",))


def main(argv: list[str] | None = None) -> int:
    job, _ = parse_config(build_parser(), StatsJob, argv)

    def body() -> int:
        setup_logging()
        if job.use_ray:
            ray_runtime.connect(job.num_workers)
        stats = compute_stats(job.dataset, use_ray=job.use_ray, grouping=job.grouping(), examples=job.examples)
        stats_url, html_url = write_stats(job.dataset, stats)
        log.info("dashboard: %s", html_url)
        print(json.dumps({"stats": stats_url, "dashboard": html_url, "totals": stats["totals"]}))
        return 0

    return run_main("stats", body)


if __name__ == "__main__":
    raise SystemExit(main())
