"""Any BLT the project knows, loaded with its patcher and the patching rule it was trained with.

``load_model(url)`` accepts, at any fsspec URL (detected from the files present, in this order):

* an HF ``BltForCausalLM`` directory (``config.json`` with ``model_type: blt``): the patcher is ``model.patcher.*``;
  the rule is our record in the config (``blt_patching``) or HF's own fields (``patching_threshold``, ...);
* a training run's output (``checkpoints/latest.json``): the latest committed DCP checkpoint, whatever the
  worker count or sharding that wrote it (DCP reshards by parameter name), with the model shape from its
  ``train_state.json``;
* a training run's output with only an ``hf/`` export;
* a bytelatent BLT (``config.json`` with ``args`` or ``params.json`` with ``model``, plus ``entropy_model/``).

A run's rule lives in ``<run>/patching.json`` (``record_run_patching``, written when training starts): the patch
set's parameters and the entropy model that scored it. Older runs without that file are resolved through the
dataset manifest named in their checkpoint's config.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_safetensors

from blt_model import bytelatent_format as bl
from blt_model.blt import ByteLatentTransformer
from blt_model.config import BltConfig
from blt_model.entropy_model import EntropyModel
from blt_model.hf_interop import load_hf_weights_into
from blt_model.patching import PatchingParams
from pipeline.manifest import Manifest
from pipeline.model_store import load_entropy_model
from pipeline.storage import exists, join, read_bytes, write_bytes_atomic

PATCHING_FILE = "patching.json"
CONFIG_PATCHING_KEY = "blt_patching"  # our full rule inside an HF config.json (HF ignores unknown keys)
ACCEPTED = ("an HF Blt directory (config.json with model_type 'blt'), a training run output (checkpoints/"
            "latest.json or hf/), or a bytelatent BLT (config.json 'args' or params.json 'model', + entropy_model/)")


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
def read_hf_state(url: str) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint directory at any fsspec URL (single file or sharded)."""
    if exists(join(url, "model.safetensors")):
        return dict(load_safetensors(read_bytes(join(url, "model.safetensors"))))
    index = _json(join(url, "model.safetensors.index.json"))
    if index is None:
        raise FileNotFoundError(f"{url}: no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_safetensors(read_bytes(join(url, shard))))
    return state


def patching_from_hf_config(config: dict, has_patcher: bool) -> PatchingParams:
    """The rule an HF config states: our record if present, else HF's own fields (entropy threshold, or one
    byte per patch when it does not patch in its forward, as HF then does)."""
    if config.get(CONFIG_PATCHING_KEY):
        return PatchingParams.from_dict(config[CONFIG_PATCHING_KEY]["params"])
    max_len = config.get("max_patch_length")
    if has_patcher and config.get("patching_mode", "entropy") == "entropy":
        return PatchingParams("entropy", float(config.get("patching_threshold", 1.335442066192627)),
                              patch_size=config.get("patch_size", 4), max_patch_length=max_len)
    return PatchingParams("byte", None, max_patch_length=max_len)


def _load_hf_dir(url: str, attn: str) -> tuple[ByteLatentTransformer, EntropyModel | None, dict]:
    config = _json(join(url, "config.json"))
    cfg = BltConfig.from_hf_dict(config, attn_implementation=attn)
    state = read_hf_state(url)
    model = ByteLatentTransformer(cfg)
    load_hf_weights_into(model, state, "model.")
    patcher = None
    if any(k.startswith("model.patcher.") for k in state):
        patcher = EntropyModel(cfg.patcher_config, attn)
        load_hf_weights_into(patcher, state, "model.patcher.")
    return model, patcher, config


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


def _load_bytelatent(url: str, attn: str) -> tuple[ByteLatentTransformer, EntropyModel | None, BltConfig]:
    config = _json(join(url, "config.json"))
    if config is None or "args" not in config:
        config = _json(join(url, "params.json"))
        state = bl.load_pth(read_bytes(join(url, "consolidated.pth")))
    else:
        state = dict(load_safetensors(read_bytes(join(url, "model.safetensors"))))
    entropy_params = _json(join(url, "entropy_model", "params.json"))
    if entropy_params is None:
        raise FileNotFoundError(f"{url}: no entropy_model/params.json (a bytelatent BLT keeps its patcher there)")
    entropy_state = bl.load_pth(read_bytes(join(url, "entropy_model", "consolidated.pth")))
    cfg = bl.blt_config_from_bytelatent(config, entropy_params)
    cfg.attn_implementation = attn
    hf_state = bl.blt_state_to_hf(state, entropy_state)
    model = ByteLatentTransformer(cfg)
    load_hf_weights_into(model, hf_state, "model.")
    patcher = EntropyModel(cfg.patcher_config, attn)
    load_hf_weights_into(patcher, hf_state, "model.patcher.")
    return model, patcher, cfg


def _is_bytelatent(url: str) -> bool:
    for name in ("config.json", "params.json"):
        data = _json(join(url, name))
        if data is not None:
            try:
                bl.blt_args(data)
                return True
            except ValueError:
                pass
    return False


def detect_source(url: str) -> str:
    config = _json(join(url, "config.json"))
    if config is not None and config.get("model_type") == "blt":
        return "hf"
    if exists(join(url, "checkpoints", "latest.json")):
        return "run-checkpoint"
    if (_json(join(url, "hf", "config.json")) or {}).get("model_type") == "blt":
        return "run-hf"
    if _is_bytelatent(url):
        return "bytelatent"
    raise ValueError(f"{url}: no BLT model found; expected {ACCEPTED}")


def load_model(url: str, entropy_model: str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> LoadedModel:
    """The model at ``url`` in eval mode on ``device``/``dtype``, with its patcher (``entropy_model`` overrides the
    one that comes with it) and the rule it was trained with."""
    url = url.rstrip("/")
    source = detect_source(url)
    patcher: EntropyModel | None = None
    step = None
    notes: list[str] = []
    run = None
    if source == "hf":
        model, patcher, config = _load_hf_dir(url, attn_implementation)
        params = patching_from_hf_config(config, patcher is not None or entropy_model is not None)
        recorded = (config.get(CONFIG_PATCHING_KEY) or {}).get("entropy_model")
        if patcher is None and entropy_model is None and recorded and params.needs_entropies:
            entropy_model = recorded
    elif source == "bytelatent":
        model, patcher, cfg = _load_bytelatent(url, attn_implementation)
        params = patching_from_hf_config(cfg.to_hf_dict(), True)
    else:
        run = read_run_patching(url)
        if source == "run-checkpoint":
            model, step = _load_run_checkpoint(url, attn_implementation)
        else:
            model, patcher, config = _load_hf_dir(join(url, "hf"), attn_implementation)
        if run is not None:
            params = run.params
        else:
            config = _json(join(url, "hf", "config.json")) or {}
            params = patching_from_hf_config(config, patcher is not None or entropy_model is not None)
            notes.append("no patching record in this run: using its HF config's rule")
        if patcher is None and entropy_model is None and run is not None:
            entropy_model = run.entropy_model
    if entropy_model is not None:
        patcher, _ = load_entropy_model(entropy_model, attn_implementation=attn_implementation)
    if params.needs_entropies and patcher is None:
        raise ValueError(f"{url}: patching mode {params.mode!r} needs an entropy model and none came with the "
                         "model: pass --entropy-model URL")
    model = model.to(device=device, dtype=dtype).eval()
    if patcher is not None:
        patcher = patcher.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, patcher, params, source, url, step, notes)
