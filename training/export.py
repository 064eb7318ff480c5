"""HF-format export of a trained BLT (``BltForCausalLM.from_pretrained`` loads it), patching as it was trained.

A run's export carries the entropy model its data was scored with (``model.patcher.*``) and the run's patching
rule in HF's config fields, so HF's own forward patches as training did; ``convert_run`` does the same when
``blt convert`` re-writes a run in the HF layout. Both go through ``blt_model.formats`` (one write path).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from blt_model import ByteLatentTransformer, formats
from blt_model.formats import BltCheckpoint
from blt_model.formats.hf import PATCHING_RECORD_KEY, blt_checkpoint
from blt_model.patching import PatchingParams
from pipeline.dataset.model_store import UrlStore, load_entropy_model
from pipeline.io.logs import get_logger
from pipeline.io.storage import join

from .model_source import RunPatching, read_run_patching

log = get_logger(__name__)


def hf_patching_config(params: PatchingParams, has_patcher: bool, record: dict | None = None) -> dict:
    """HF config fields for ``params``, plus our full rule under ``blt_patching``. HF patches only by a global
    entropy threshold (then splits at ``max_patch_length``); any other mode is recorded but not expressible."""
    expressible = params.mode == "entropy" and has_patcher
    fields: dict = {"max_patch_length": params.max_patch_length}
    if expressible:
        fields.update(patch_in_forward=True, patching_mode="entropy", patching_threshold=float(params.threshold))
    else:
        fields["patch_in_forward"] = False
        log.warning("HF cannot express patching mode %r (it patches by a global entropy threshold only): the export "
                    "records the rule in config.json '%s'; HF's own forward will patch one byte per patch",
                    params.mode, PATCHING_RECORD_KEY)
    fields[PATCHING_RECORD_KEY] = {**(record or {}), "params": params.to_dict(), "hf_expressible": expressible}
    return fields


def with_run_rule(run: RunPatching) -> Callable[[BltCheckpoint], BltCheckpoint]:
    """A checkpoint change that attaches the run's patcher (if it has none) and writes the run's rule."""

    def finish(checkpoint: BltCheckpoint) -> BltCheckpoint:
        if not checkpoint.has_patcher:
            patcher = run.load_patcher()
            if patcher is not None:
                checkpoint = formats.attach_patcher(checkpoint, patcher)
        extra = hf_patching_config(run.params, checkpoint.has_patcher, run.to_dict())
        return BltCheckpoint(checkpoint.config, checkpoint.hf_state, {**checkpoint.extra_config, **extra})

    return finish


def export_hf(model: ByteLatentTransformer, output: str, run: RunPatching | None = None) -> str:
    """config.json + model.safetensors at ``<output>/hf`` (with the run's patcher and rule); returns its URL."""
    url = join(output, "hf")
    checkpoint = blt_checkpoint(model)
    if run is not None:
        checkpoint = with_run_rule(run)(checkpoint)
    formats.hf.write_blt(UrlStore(url), checkpoint)
    return url


def convert_run(src: str, dst: str, to: str | None = None, entropy_model: str | None = None) -> tuple[str, str]:
    """``formats.convert``; a training run keeps (or gets) its patcher and its recorded rule on the way."""
    patcher = load_entropy_model(entropy_model)[0] if entropy_model else None
    run = read_run_patching(src.rstrip("/"))
    return formats.convert(UrlStore(src), UrlStore(dst), to, patcher, with_run_rule(run) if run else None)


def full_model(model: torch.nn.Module, model_cfg, rank: int) -> ByteLatentTransformer | None:
    """The whole model on rank 0's CPU, gathered from any sharding (a collective: every rank calls it)."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    copy = ByteLatentTransformer(model_cfg)
    copy.load_state_dict(full)
    return copy


def export_trained(model: torch.nn.Module, model_cfg, output: str, rank: int) -> str | None:
    """Gather the full weights and export them from rank 0 (every rank calls it)."""
    export = full_model(model, model_cfg, rank)
    return None if export is None else export_hf(export, output, read_run_patching(output))
