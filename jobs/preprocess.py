"""``blt preprocess`` / ``python -m jobs.preprocess``: raw shards -> entropies + patches + manifest.

Every field of ``pipeline.preprocess.PreprocessConfig`` (with its ``patching`` and ``reader`` sections) is a flag
and a YAML key; the short spellings (``--threshold``, ``--text-field``, ``--no-ray``, ...) name the same fields."""

from __future__ import annotations

import dataclasses
import json

from blt_model.patching import MODE_REGISTRY, PatchingParams
from pipeline.io import ray_runtime
from pipeline.io.logs import setup_logging
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess

from .common import dataclass_parser, parse_config, run_main

# Short spellings of the patching section, shared with ``blt repatch``.
PATCHING_ALIASES = {
    "patch_mode": "patching.mode", "threshold": "patching.threshold", "threshold_add": "patching.threshold_add",
    "patch_size": "patching.patch_size", "max_patch_length": "patching.max_patch_length",
}
ALIASES = {
    **PATCHING_ALIASES, "ray": "use_ray",
    **{name: f"reader.{name}" for name in
       ("text_field", "id_field", "txt_mode", "max_doc_bytes", "format", "max_line_bytes")},
}


def cli_patching(params: PatchingParams) -> PatchingParams:
    """A mode with a budget (``patch_size``) has no threshold: the threshold's default does not apply."""
    return dataclasses.replace(params, threshold=None) if MODE_REGISTRY[params.mode].budget else params


CONFIG = PreprocessConfig  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(PreprocessConfig, "blt preprocess", __doc__, aliases=ALIASES)


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(build_parser(), PreprocessConfig, argv)
    cfg.patching = cli_patching(cfg.patching)

    def body() -> int:
        setup_logging()
        if cfg.use_ray:
            ray_runtime.connect()
        manifest = run_preprocess(cfg)
        print(json.dumps({"manifest": manifest.url, "default_patch_set": manifest.default_patch_set,
                          "totals": manifest.totals()}))
        return 0

    return run_main("preprocess", body)


if __name__ == "__main__":
    raise SystemExit(main())
