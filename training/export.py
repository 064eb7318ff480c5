"""HF-format export of a trained BLT (``BltForCausalLM.from_pretrained`` loads it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from blt_model import ByteLatentTransformer
from blt_model.formats.hf import save_hf_checkpoint
from pipeline.io.storage import join, write_bytes_atomic


def export_hf(model: ByteLatentTransformer, output: str) -> str:
    """config.json + model.safetensors at ``<output>/hf``; returns its URL."""
    url = join(output, "hf")
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(model, tmp)
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
    return export_hf(export, output)
