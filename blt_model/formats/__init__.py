"""Checkpoint layouts, one module each (``ours``, ``hf``, ``bytelatent``), and the registry that picks one.

Every layout converts through one exchange form (``BltCheckpoint``: our config + HF tensor names), so a new layout
is one module with detect/read/write functions and one line in ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..entropy_model import EntropyModel
from . import bytelatent, hf, ours
from .base import (
    BltCheckpoint,
    CheckpointFormat,
    CheckpointLayoutError,
    CheckpointStore,
    EntropyCheckpoint,
    LocalStore,
    read_json,
)

FORMATS: dict[str, CheckpointFormat] = {f.name: f for f in (ours.FORMAT, hf.FORMAT, bytelatent.FORMAT)}

ENTROPY_LAYOUTS = (
    "our checkpoint (config.json with 'entropy_model' + model.safetensors), "
    "an HF Blt checkpoint (config.json with model_type 'blt' + model.safetensors or model.safetensors.index.json), "
    "or bytelatent's layout (entropy_model/params.json + entropy_model/consolidated.pth, "
    "or params.json + consolidated.pth)"
)
BLT_LAYOUTS = (
    "a bytelatent BLT (config.json with 'args' + model.safetensors, or params.json with 'model' + "
    "consolidated.pth, each with entropy_model/), an HF Blt directory (config.json with model_type 'blt'), or a "
    "training output with hf/"
)


def detect_entropy(store: CheckpointStore) -> CheckpointFormat | None:
    return next((f for f in FORMATS.values() if f.is_entropy is not None and f.is_entropy(store)), None)


def read_entropy_checkpoint(store: CheckpointStore) -> EntropyCheckpoint:
    """Detect the layout and read the entropy model's config and weights (our names)."""
    layout = detect_entropy(store)
    if layout is None:
        raise CheckpointLayoutError(
            f"no entropy model at {store.location}: expected {ENTROPY_LAYOUTS}; found {describe(store)}")
    return layout.read_entropy(store)


def detect_blt(store: CheckpointStore) -> CheckpointFormat:
    for layout in FORMATS.values():
        if layout.is_blt is not None and layout.is_blt(store):
            return layout
    raise CheckpointLayoutError(f"{store.location}: not a BLT checkpoint we can convert: expected {BLT_LAYOUTS}")


DEFAULT_TARGET = {"hf": "bytelatent", "bytelatent": "hf", "ours": "hf"}


def attach_patcher(checkpoint: BltCheckpoint, patcher: EntropyModel) -> BltCheckpoint:
    """The same BLT with ``patcher`` as its entropy model (replacing any it had), so it patches in its forward."""
    return hf.blt_checkpoint(hf.blt_from_checkpoint(checkpoint), patcher, checkpoint.extra_config)


def convert(src: CheckpointStore, dst: CheckpointStore, to: str | None = None,
            patcher: EntropyModel | None = None,
            finish: Callable[[BltCheckpoint], BltCheckpoint] | None = None) -> tuple[str, str]:
    """Read the BLT at ``src`` in whatever layout it is, write it to ``dst`` in layout ``to`` (default: the other
    public one); ``patcher`` attaches an entropy model (else one that came with it is kept); ``finish`` changes
    the checkpoint last (a training run's patching rule). Returns (source layout, target layout)."""
    source = detect_blt(src)
    target = FORMATS[to or DEFAULT_TARGET[source.name]]
    if target is source:
        raise ValueError(f"{src.location} is already in {source.name} layout; nothing to convert to {target.name}")
    checkpoint = source.read_blt(src)
    if patcher is not None:
        checkpoint = attach_patcher(checkpoint, patcher)
    if finish is not None:
        checkpoint = finish(checkpoint)
    target.write_blt(dst, checkpoint)
    return source.name, target.name


def describe(store: CheckpointStore) -> str:
    """What is at the location, for an error message."""
    names = store.names()
    if names is None:
        return "nothing (no such directory)"
    if not names:
        return "an empty directory"
    text = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    if "config.json" in names:
        config = read_json(store, "config.json") or {}
        text += f" (config.json keys: {', '.join(sorted(config)[:8])})"
    return text

__all__ = [
    "FORMATS", "BltCheckpoint", "CheckpointFormat", "CheckpointLayoutError", "CheckpointStore", "EntropyCheckpoint",
    "LocalStore", "attach_patcher", "bytelatent", "convert", "describe", "detect_blt", "detect_entropy", "hf", "ours", "read_entropy_checkpoint",
]
