"""Shared CLI plumbing: YAML config files merged under flags, one-line failures, output locations."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import yaml


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file whose keys are these flags (with _ or -); flags win")


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Flags override the YAML file, which overrides the defaults."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        with open(pre.config) as handle:
            data = yaml.safe_load(handle) or {}
        known = {a.dest for a in parser._actions}
        unknown = [k for k in data if k.replace("-", "_") not in known]
        if unknown:
            parser.error(f"unknown keys in {pre.config}: {unknown}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in data.items()})
    return parser.parse_args(argv)


def run_main(name: str, body: Callable[[], int | None]) -> int:
    """Run a job; any failure becomes one line on stderr and exit status 1 (2 for usage errors)."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the job's contract is one readable line, not a traceback
        print(f"{name}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
