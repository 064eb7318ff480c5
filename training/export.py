"""HF-format export of a trained BLT that HF runs as it was trained: the entropy model rides along as
``model.patcher.*`` and the run's patching rule is written into HF's config fields, so
``BltForCausalLM.from_pretrained(<run>/hf)`` patches in its forward exactly as the training data was patched."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from blt_model import ByteLatentTransformer, EntropyModel
from blt_model.hf_interop import save_hf_checkpoint
from blt_model.patching import PatchingParams
from pipeline.logs import get_logger
from pipeline.model_store import load_entropy_model
from pipeline.storage import join, write_bytes_atomic

from .model_source import CONFIG_PATCHING_KEY, RunPatching, read_run_patching

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
                    params.mode, CONFIG_PATCHING_KEY)
    fields[CONFIG_PATCHING_KEY] = {**(record or {}), "params": params.to_dict(), "hf_expressible": expressible}
    return fields


def export_hf(model: ByteLatentTransformer, output: str, run: RunPatching | None = None,
              patcher: EntropyModel | None = None) -> str:
    """config.json + model.safetensors at ``<output>/hf`` (with the run's patcher and rule); returns its URL."""
    url = join(output, "hf")
    overrides = None
    if run is not None:
        if patcher is None and run.entropy_model and run.params.needs_entropies:
            patcher, _ = load_entropy_model(run.entropy_model)
        overrides = hf_patching_config(run.params, patcher is not None, run.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(model, tmp, patcher, overrides)
        for path in Path(tmp).iterdir():
            write_bytes_atomic(join(url, path.name), path.read_bytes())
    return url


def export_trained(model: torch.nn.Module, model_cfg, output: str, rank: int) -> str | None:
    """Gather the full weights (a collective: every rank calls it) and export them from rank 0."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    export = ByteLatentTransformer(model_cfg)
    export.load_state_dict(full)
    return export_hf(export, output, read_run_patching(output))
