"""Any BLT the project knows, loaded with its patcher and the patching rule it was trained with.

``load_model(url)`` accepts, at any fsspec URL:

* a training run's output (``checkpoints/latest.json``): the latest committed DCP checkpoint, whatever the
  worker count or sharding that wrote it (DCP reshards by parameter name), with the model shape from its
  ``train_state.json``;
* any BLT checkpoint layout ``blt_model.formats`` reads (detected by its registry, fetched through ``UrlStore``):
  an HF ``BltForCausalLM`` directory (the patcher is ``model.patcher.*``; the rule is our record in the config,
  ``blt_patching``, or HF's own fields), a run output with only an ``hf/`` export, a bytelatent BLT.

A run's rule lives in ``<run>/patching.json`` (``record_run_patching``, written when training starts): the patch
set's parameters and the entropy model that scored it. Older runs without that file are resolved through the
dataset manifest named in their checkpoint's config.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field

import torch

from blt_model import formats
from blt_model.blt import ByteLatentTransformer
from blt_model.entropy_model import EntropyModel
from blt_model.formats import BltCheckpoint, CheckpointLayoutError
from blt_model.formats.hf import PATCHING_RECORD_KEY, blt_from_checkpoint, patcher_from_checkpoint
from blt_model.patching import PatchingParams
from pipeline.dataset.manifest import Manifest
from pipeline.dataset.model_store import UrlStore, load_entropy_model
from pipeline.io.storage import exists, join, read_bytes, write_bytes_atomic

PATCHING_FILE = "patching.json"
ACCEPTED = ("an HF Blt directory (config.json with model_type 'blt'), a training run output (checkpoints/"
            "latest.json or hf/), or a bytelatent BLT (config.json 'args' or params.json 'model', + entropy_model/)")
SOURCE_OF_LAYOUT = {"hf": "hf", "ours": "run-hf", "bytelatent": "bytelatent"}


@dataclass
class RunPatching:
    """How a run's training data was patched: the rule, and the entropy model whose scores it thresholded."""

    params: PatchingParams
    entropy_model: str | None = None  # URL the dataset's entropies were computed with
    entropy_model_id: str | None = None
    patch_set: str | None = None
    dataset: str | None = None

    def to_dict(self) -> dict:
        return {"params": self.params.to_dict(), "entropy_model": self.entropy_model,
                "entropy_model_id": self.entropy_model_id, "patch_set": self.patch_set, "dataset": self.dataset}

    @classmethod
    def from_dict(cls, data: dict) -> RunPatching:
        return cls(PatchingParams.from_dict(data["params"]), data.get("entropy_model"), data.get("entropy_model_id"),
                   data.get("patch_set"), data.get("dataset"))

    def load_patcher(self) -> EntropyModel | None:
        """The entropy model that scored the run's patch set, when its rule needs entropies (and names one)."""
        if self.entropy_model and self.params.needs_entropies:
            return load_entropy_model(self.entropy_model)[0]
        return None


@dataclass
class LoadedModel:
    model: ByteLatentTransformer
    patcher: EntropyModel | None
    patching: PatchingParams
    source: str  # "hf" | "run-checkpoint" | "run-hf" | "bytelatent"
    url: str = ""
    step: int | None = None  # training step of a run checkpoint
    notes: list[str] = field(default_factory=list)


# ----- the run's record ---------------------------------------------------------------------------------------
def patching_from_manifest(dataset: str, patch_set: str | None) -> RunPatching:
    manifest = Manifest.load(dataset)
    key = patch_set or manifest.default_patch_set
    if key not in manifest.patch_sets:
        raise KeyError(f"{dataset}: no patch set {key!r}")
    model = manifest.entropy_model or {}
    return RunPatching(PatchingParams.from_dict(manifest.patch_sets[key].params), model.get("url"), model.get("id"),
                       key, dataset)


def record_run_patching(output: str, dataset: str | None, patch_set: str | None) -> RunPatching | None:
    """Write ``<output>/patching.json`` (the rule this run trains with); None when the dataset has no patch set
    (e.g. a mix of sources: their rules are recorded by source elsewhere)."""
    if dataset is None:
        return None
    record = patching_from_manifest(dataset, patch_set)
    write_bytes_atomic(join(output, PATCHING_FILE), json.dumps(record.to_dict(), indent=2).encode())
    return record


def read_run_patching(output: str) -> RunPatching | None:
    """The run's recorded rule, or (older runs) the one its checkpoint's config points at; None if unknown."""
    url = join(output, PATCHING_FILE)
    if exists(url):
        return RunPatching.from_dict(json.loads(read_bytes(url)))
    shared = _train_state(output)
    if shared is None:
        return None
    config = shared.get("config", {})
    if not config.get("dataset"):
        return None
    return patching_from_manifest(config["dataset"], config.get("patch_set"))


def _json(url: str) -> dict | None:
    return json.loads(read_bytes(url)) if exists(url) else None


def _train_state(output: str) -> dict | None:
    pointer = _json(join(output, "checkpoints", "latest.json"))
    if pointer is None:
        return None
    return _json(join(pointer["path"], "train_state.json"))


# ----- weights ------------------------------------------------------------------------------------------------
def patching_from_checkpoint(checkpoint: BltCheckpoint, has_patcher: bool) -> PatchingParams:
    """The rule a checkpoint states: our record if present, else HF's own fields (entropy threshold, or one
    byte per patch when there is no patcher, as HF then does)."""
    record = checkpoint.extra_config.get(PATCHING_RECORD_KEY)
    if record:
        return PatchingParams.from_dict(record["params"])
    cfg = checkpoint.config
    if has_patcher and cfg.patching_mode == "entropy":
        return PatchingParams("entropy", float(cfg.patching_threshold), patch_size=cfg.patch_size,
                              max_patch_length=cfg.max_patch_length)
    return PatchingParams("byte", None, max_patch_length=cfg.max_patch_length)


def _load_run_checkpoint(url: str, attn: str) -> tuple[ByteLatentTransformer, int]:
    """The latest committed DCP checkpoint's model weights (any world size / DDP / FSDP2 layout)."""
    import torch.distributed.checkpoint as dcp

    from .checkpoint import _storage, latest
    from .config import TrainConfig

    pointer = latest(url)
    shared = json.loads(read_bytes(join(pointer["path"], "train_state.json")))
    train_cfg = TrainConfig(**shared["config"])
    model_cfg = train_cfg.model_config()
    model_cfg.attn_implementation = attn
    model = ByteLatentTransformer(model_cfg)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(state, storage_reader=_storage(pointer["path"], False))
    model.load_state_dict(state["model"])
    return model, int(pointer["step"])


def detect_source(url: str) -> tuple[str, formats.CheckpointFormat | None]:
    """("run-checkpoint", None) for a run with a committed checkpoint, else (source name, its layout)."""
    store = UrlStore(url)
    if not formats.hf.is_hf(store) and exists(join(url, "checkpoints", "latest.json")):
        return "run-checkpoint", None
    try:
        layout = formats.detect_blt(store)
    except CheckpointLayoutError:
        raise ValueError(f"{url}: no BLT model found; expected {ACCEPTED}") from None
    return SOURCE_OF_LAYOUT[layout.name], layout


def load_model(url: str, entropy_model: str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> LoadedModel:
    """The model at ``url`` in eval mode on ``device``/``dtype``, with its patcher (``entropy_model`` overrides the
    one that comes with it) and the rule it was trained with."""
    url = url.rstrip("/")
    source, layout = detect_source(url)
    patcher: EntropyModel | None = None
    step = None
    notes: list[str] = []
    checkpoint = None
    if layout is not None:
        checkpoint = layout.read_blt(UrlStore(url))
        checkpoint = dataclasses.replace(
            checkpoint, config=dataclasses.replace(checkpoint.config, attn_implementation=attn_implementation))
        model = blt_from_checkpoint(checkpoint)
        patcher = patcher_from_checkpoint(checkpoint)
        params = patching_from_checkpoint(checkpoint, patcher is not None or entropy_model is not None)
    else:
        model, step = _load_run_checkpoint(url, attn_implementation)
    if source in ("run-checkpoint", "run-hf"):
        run = read_run_patching(url)
        if run is not None:
            params = run.params
            if patcher is None and entropy_model is None:
                entropy_model = run.entropy_model
        elif checkpoint is None:
            raise ValueError(f"{url}: no patching record in this run (patching.json) and no dataset in its config")
        else:
            notes.append("no patching record in this run: using its HF config's rule")
    elif patcher is None and entropy_model is None and params.needs_entropies:
        entropy_model = (checkpoint.extra_config.get(PATCHING_RECORD_KEY) or {}).get("entropy_model")
    if entropy_model is not None:
        patcher, _ = load_entropy_model(entropy_model, attn_implementation=attn_implementation)
    if params.needs_entropies and patcher is None:
        raise ValueError(f"{url}: patching mode {params.mode!r} needs an entropy model and none came with the "
                         "model: pass --entropy-model URL")
    model = model.to(device=device, dtype=dtype).eval()
    if patcher is not None:
        patcher = patcher.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, patcher, params, source, url, step, notes)
