"""``blt convert SRC DST``: BLT checkpoints between bytelatent, HF and our training output, at any fsspec URL.

* bytelatent BLT (hub: ``config.json`` {"args"} + ``model.safetensors``; training: ``params.json`` {"model"} +
  ``consolidated.pth``; with ``entropy_model/``) -> HF ``BltForCausalLM`` directory (``--to hf``, the default);
* HF Blt directory -> bytelatent training layout (``--to bytelatent``, the default for HF input):
  ``params.json`` + ``consolidated.pth`` + ``entropy_model/{params.json,consolidated.pth}``;
* our training output (``<run>/hf``) -> HF, attaching ``--entropy-model URL`` (any layout ``blt preprocess``
  accepts) as the patcher, so the exported model patches in its forward like a released one.
"""

from __future__ import annotations

import argparse
import json

from blt_model import formats
from pipeline.logs import get_logger
from pipeline.model_store import UrlStore, load_entropy_model

from .common import add_config_flag, parse_with_config, run_main

log = get_logger(__name__)


def convert(src: str, dst: str, to: str | None = None, entropy_model: str | None = None) -> dict:
    patcher = load_entropy_model(entropy_model)[0] if entropy_model else None
    kind, target = formats.convert(UrlStore(src), UrlStore(dst), to, patcher)
    log.info("converted %s (%s) -> %s (%s)", src, kind, dst, target)
    return {"source": src, "source_layout": kind, "output": dst, "layout": target}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flag(parser)
    parser.add_argument("source", nargs="?", help="checkpoint URL (bytelatent, HF Blt, or a training output)")
    parser.add_argument("output", nargs="?", help="output directory URL")
    parser.add_argument("--to", choices=["hf", "bytelatent"], default=None,
                        help="target layout (default: HF for bytelatent/ours, bytelatent for HF)")
    parser.add_argument("--entropy-model", default=None, help="patcher to attach (ours -> HF), any accepted layout")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.source or not args.output:
        parser.error("SOURCE and OUTPUT are required")

    def body() -> int:
        print(json.dumps(convert(args.source, args.output, args.to, args.entropy_model)))
        return 0

    return run_main("convert", body)


if __name__ == "__main__":
    raise SystemExit(main())
