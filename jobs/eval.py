"""``blt eval MODEL`` / ``python -m jobs.eval``: bits per byte on datasets or raw inputs, and lm-eval tasks.

MODEL is a training run's output, an HF Blt directory or a bytelatent BLT at any fsspec URL. ``--dataset DS``
(repeatable; ``DS#PATTERN`` picks some of its inputs) scores the stored patch set's documents, whole, per source;
``--validation-fraction F --validation-seed S`` only those a run with the same stream settings held out.
``--inputs GLOB`` (repeatable) scores raw files through the preprocessing readers, patched on the fly by the
model's entropy model and rule. ``--tasks a,b`` runs lm-eval tasks on the ``blt`` harness model. Prints a table
(or, with ``--json``, the report) and writes the report to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field

from pipeline.ingest.readers import ReaderConfig
from pipeline.io import ray_runtime
from pipeline.io.logs import get_logger, setup_logging
from pipeline.io.storage import write_bytes_atomic
from training.evaluate import ScoreSettings, Selection, dataset_units, evaluate_units, input_units, load, window_length

from .common import dataclass_parser, parse_config, run_main

log = get_logger(__name__)
LM_EVAL_KEYS = ("results", "versions", "n-shot", "n-samples", "higher_is_better")


@dataclass
class EvalConfig:
    model: str  # a run's output, an HF Blt directory or a bytelatent BLT (any fsspec URL)
    dataset: list[str] = field(default_factory=list)  # DATASET[#PATTERN,...] to score; repeatable
    inputs: list[str] = field(default_factory=list)  # raw input glob, patched on the fly; repeatable
    patch_set: str | None = None  # patch set (params key) of every dataset; None = each dataset's default
    validation_fraction: float = 0.0  # > 0: only the documents a run held out (its eval.validation_fraction)
    validation_seed: int = 0  # the run's stream.validation_seed
    entropy_model: str | None = None  # entropy model for on-the-fly patching instead of the model's own
    seq_len: int | None = None  # window length in bytes; None: the run's seq_len (MODEL a run output), else 512
    batch_size: int = 8  # windows per model call
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tasks: str | None = None  # lm-eval task names, comma-separated
    include_path: str | None = None  # folder of extra lm-eval task YAMLs
    builtin_tasks: bool = True  # index lm-eval's own tasks too (--no-builtin-tasks: only --include-path's)
    num_fewshot: int | None = None  # lm-eval few-shot examples
    limit: float | None = None  # lm-eval examples per task (a fraction when < 1)
    output: str = "blt_eval.json"  # where the JSON report is written (any fsspec URL)
    json: bool = False  # print the JSON report on stdout instead of the table
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    num_workers: int | None = None  # local Ray CPUs (ignored on a cluster)
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


def _fail(message: str) -> None:
    print(f"blt eval: error: {message}", file=sys.stderr)
    raise SystemExit(2)


CONFIG = EvalConfig  # the schema: flags, help and YAML keys


def build_parser() -> argparse.ArgumentParser:
    parser = dataclass_parser(EvalConfig, "blt eval", __doc__, positional=("model",))
    parser.add_argument("--no-ray", action="store_true", help="score in this process")
    return parser


def check(cfg: EvalConfig) -> None:
    if not (cfg.dataset or cfg.inputs or cfg.tasks):
        _fail("nothing to evaluate: give --dataset, --inputs or --tasks")
    if not 0 <= cfg.validation_fraction < 1:
        _fail(f"--validation-fraction must be in [0, 1), got {cfg.validation_fraction}")
    if (cfg.seq_len is not None and cfg.seq_len < 2) or cfg.batch_size < 1:
        _fail("--seq-len must be >= 2 and --batch-size >= 1")
    if not cfg.builtin_tasks and not cfg.include_path:
        _fail("--no-builtin-tasks needs --include-path")
    if cfg.limit is not None and cfg.limit <= 0:
        _fail("--limit must be > 0")
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        _fail("--num-fewshot must be >= 0")


def run_eval(cfg: EvalConfig, use_ray: bool = True) -> dict:
    """The report: bits per byte per source and overall, and lm-eval's results."""
    seq_len = cfg.seq_len or window_length(cfg.model)
    report: dict = {"model": cfg.model, "seq_len": seq_len}
    settings = ScoreSettings(cfg.model, cfg.entropy_model, seq_len, cfg.batch_size, cfg.device,
                             Selection(cfg.validation_fraction, cfg.validation_seed), cfg.reader)
    units = dataset_units(cfg.dataset, cfg.patch_set) if cfg.dataset else []
    units += input_units(cfg.inputs) if cfg.inputs else []
    if units:
        if use_ray:
            ray_runtime.connect(cfg.num_workers)
        result = evaluate_units(units, settings, use_ray, cfg.cpus_per_task, cfg.gpus_per_task)
        report["bits_per_byte"] = result.to_dict()
        if cfg.validation_fraction > 0:
            report["selection"] = asdict(settings.selection)
    if cfg.tasks:
        from training.harness import BltLM, run_tasks

        lm = BltLM(loaded=load(cfg.model, cfg.entropy_model, cfg.device), seq_len=seq_len,
                   batch_size=cfg.batch_size)
        results = run_tasks(lm, [t for t in cfg.tasks.split(",") if t], cfg.include_path, cfg.num_fewshot,
                            cfg.limit, builtin_tasks=cfg.builtin_tasks)
        report["lm_eval"] = {k: results[k] for k in LM_EVAL_KEYS if k in (results or {})}
    return report


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def format_table(report: dict) -> str:
    lines = []
    bpb = report.get("bits_per_byte")
    if bpb:
        head = ("source", "documents", "bytes", "patches", "bytes/patch", "bits/byte")
        rows = [(name, t["documents"], t["bytes"], t["patches"], _number(t["bytes_per_patch"]),
                 _number(t["bits_per_byte"])) for name, t in bpb["sources"].items()]
        o = bpb["overall"]
        rows.append(("overall", o["documents"], o["bytes"], o["patches"], _number(o["bytes_per_patch"]),
                     _number(o["bits_per_byte"])))
        lines += _columns(head, rows)
    for task, metrics in (report.get("lm_eval") or {}).get("results", {}).items():
        if lines:
            lines.append("")
        rows = [(task, key.split(",")[0], _number(value)) for key, value in metrics.items()
                if "stderr" not in key and key != "alias" and isinstance(value, (int, float))]
        lines += _columns(("task", "metric", "value"), rows)
    return "\n".join(lines)


def _columns(head: tuple, rows: list[tuple]) -> list[str]:
    cells = [tuple(str(c) for c in row) for row in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in cells]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg, args = parse_config(parser, EvalConfig, argv)
    for name in ("dataset", "inputs"):  # a YAML file may give one string
        if isinstance(getattr(cfg, name), str):
            setattr(cfg, name, [getattr(cfg, name)])
    check(cfg)

    def body() -> int:
        setup_logging()
        report = run_eval(cfg, use_ray=not args.no_ray)
        text = json.dumps(report, indent=2, default=str)
        write_bytes_atomic(cfg.output, text.encode())
        if cfg.json:
            print(text)
        else:
            print(format_table(report))
            print(f"report: {cfg.output}")
        return 0

    return run_main("eval", body)


if __name__ == "__main__":
    raise SystemExit(main())
