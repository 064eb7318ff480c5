"""``blt convert SRC DST``: BLT checkpoints between bytelatent, HF and our training output, at any fsspec URL.

* bytelatent BLT (hub: ``config.json`` {"args"} + ``model.safetensors``; training: ``params.json`` {"model"} +
  ``consolidated.pth``; with ``entropy_model/``) -> HF ``BltForCausalLM`` directory (``--to hf``, the default);
* HF Blt directory -> bytelatent training layout (``--to bytelatent``, the default for HF input):
  ``params.json`` + ``consolidated.pth`` + ``entropy_model/{params.json,consolidated.pth}``;
* our training output (``<run>/hf``) -> HF with a patcher (``--entropy-model URL``, any layout ``blt preprocess``
  accepts; else the export's own; else the one that scored the run's data) and the run's patching rule, so the
  exported model patches in its forward as it was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from blt_model import formats
from pipeline.io.logs import get_logger
from training.export import convert_run

from .common import dataclass_parser, parse_config, run_main

log = get_logger(__name__)


def convert(src: str, dst: str, to: str | None = None, entropy_model: str | None = None) -> dict:
    kind, target = convert_run(src, dst, to, entropy_model)
    log.info("converted %s (%s) -> %s (%s)", src, kind, dst, target)
    return {"source": src, "source_layout": kind, "output": dst, "layout": target}


@dataclass
class ConvertJob:
    source: str  # checkpoint URL (bytelatent, HF Blt, or a training output)
    output: str  # output directory URL
    to: str | None = None  # target layout: hf or bytelatent (None: HF for bytelatent/ours, bytelatent for HF)
    entropy_model: str | None = None  # patcher to attach (ours -> HF), any accepted layout

    def __post_init__(self) -> None:
        if self.to is not None and self.to not in set(formats.DEFAULT_TARGET.values()):
            raise ValueError(f"--to must be one of {sorted(set(formats.DEFAULT_TARGET.values()))}, not {self.to!r}")


CONFIG = ConvertJob  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(ConvertJob, "blt convert", __doc__, positional=("source", "output"))


def main(argv: list[str] | None = None) -> int:
    job, _ = parse_config(build_parser(), ConvertJob, argv)

    def body() -> int:
        print(json.dumps(convert(job.source, job.output, job.to, job.entropy_model)))
        return 0

    return run_main("convert", body)


if __name__ == "__main__":
    raise SystemExit(main())
