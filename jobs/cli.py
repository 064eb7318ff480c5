"""``blt`` console script: one subcommand per job."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": "jobs.demo",
    "preprocess": "jobs.preprocess",
    "repatch": "jobs.repatch",
    "train": "jobs.train",
    "train-entropy": "jobs.train_entropy",
    "stats": "jobs.stats",
    "dashboard": "jobs.dashboard",
    "convert": "jobs.convert",
    "study": "jobs.study",
    "generate": "jobs.generate",
    "eval": "jobs.eval",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: blt {" + ",".join(COMMANDS) + "} [options]   (blt COMMAND --help for each)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
