"""``blt preprocess`` / ``python -m jobs.preprocess``: raw shards -> entropies + patches + manifest."""

from __future__ import annotations

import argparse
import json

from blt_model.patching import PATCH_MODES, PatchingParams
from pipeline import ray_runtime
from pipeline.logs import setup_logging
from pipeline.preprocess import PreprocessConfig, run_preprocess
from pipeline.readers import ReaderConfig

from .common import add_config_flag, parse_with_config, run_main

_DEFAULTS = PreprocessConfig(inputs="", output="", entropy_model="")  # flag defaults come from the config


def add_patching_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch-mode", default="entropy", choices=PATCH_MODES)
    parser.add_argument("--threshold", type=float, default=1.335442066192627)
    parser.add_argument("--threshold-add", type=float, default=None)
    parser.add_argument("--patch-size", type=float, default=4,
                        help="static mode (integer); topk mode: len // patch-size patches per document")
    parser.add_argument("--max-patch-length", type=int, default=None)


def patching_from_args(args: argparse.Namespace) -> PatchingParams:
    patch_size = int(args.patch_size) if float(args.patch_size).is_integer() else args.patch_size
    threshold = None if args.patch_mode == "topk" else args.threshold  # topk has a budget, not a threshold
    return PatchingParams(args.patch_mode, threshold, args.threshold_add, patch_size, args.max_patch_length)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt preprocess", description=__doc__)
    add_config_flag(parser)
    parser.add_argument("--inputs", required=False, help="fsspec URL or glob of raw shards (s3://b/raw/*.jsonl.zst)")
    parser.add_argument("--output", required=False, help="dataset root URL")
    parser.add_argument("--entropy-model", required=False, help="entropy model checkpoint URL")
    add_patching_flags(parser)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--id-field", default="id")
    parser.add_argument("--txt-mode", default="file", choices=["file", "line"])
    parser.add_argument("--max-doc-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-line-bytes", type=int, default=64 << 20,
                        help="longer jsonl/txt lines are counted as line_too_long skips, never held in memory")
    parser.add_argument("--format", default=None, choices=["jsonl", "txt", "parquet", "binary"])
    parser.add_argument("--span", type=int, default=_DEFAULTS.span,
                        help="bytes per entropy-model call (documents packed)")
    parser.add_argument("--context", type=int, default=None,
                        help="left context per span (default: the model's receptive field, exact)")
    parser.add_argument("--unit-bytes", type=int, default=256 << 20,
                        help="larger parquet / uncompressed jsonl and txt-line inputs become several work units")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--strict", action="store_true", help="fail if any input was skipped")
    parser.add_argument("--no-ray", action="store_true", help="run in this process (debugging)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    for name in ("inputs", "output", "entropy_model"):
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required")

    def body() -> int:
        setup_logging()
        cfg = PreprocessConfig(
            inputs=args.inputs, output=args.output, entropy_model=args.entropy_model,
            patching=patching_from_args(args),
            reader=ReaderConfig(args.text_field, args.id_field, args.txt_mode, args.max_doc_bytes, args.format,
                                max_line_bytes=args.max_line_bytes),
            span=args.span, context=args.context, unit_bytes=args.unit_bytes,
            num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
            strict=args.strict, use_ray=not args.no_ray,
        )
        if cfg.use_ray:
            ray_runtime.connect()
        manifest = run_preprocess(cfg)
        print(json.dumps({"manifest": manifest.url, "default_patch_set": manifest.default_patch_set,
                          "totals": manifest.totals()}))
        return 0

    return run_main("preprocess", body)


if __name__ == "__main__":
    raise SystemExit(main())
