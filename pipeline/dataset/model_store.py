"""Entropy models at any fsspec URL, in every layout a user has, with a content id that ignores the layout.

Accepted layouts (detected from the files present, in this order):

* ours: ``config.json`` with an ``entropy_model`` entry + ``model.safetensors`` (what ``blt train-entropy`` writes);
* HF Blt: ``config.json`` (``model_type: blt``) + ``model.safetensors`` or ``model.safetensors.index.json``;
  the patcher is ``model.patcher.*`` with ``patcher_config``. Only the patcher's bytes are fetched: the
  safetensors header (8-byte length + JSON) gives each tensor's byte range, read with ranged GETs;
* bytelatent: ``entropy_model/params.json`` + ``entropy_model/consolidated.pth`` under the URL (a BLT release
  or training output), or a bare directory holding ``params.json`` + ``consolidated.pth``.

The id keys stored entropies: sha256 of the canonical config (our ``EntropyModelConfig``) and the canonical
weights (our parameter names, dtype, shape, bytes), so the same weights in two layouts have the same id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from blt_model import bytelatent_format as bl
from blt_model.config import (
    EntropyModelConfig,
    entropy_model_config_from_dict,
    entropy_model_config_to_dict,
)
from blt_model.entropy_model import EntropyModel
from blt_model.hf_interop import entropy_param_names, our_state_from_hf
from pipeline.io.storage import filesystem, join, read_bytes, write_bytes_atomic

ACCEPTED = (
    "our checkpoint (config.json with 'entropy_model' + model.safetensors), "
    "an HF Blt checkpoint (config.json with model_type 'blt' + model.safetensors or model.safetensors.index.json), "
    "or bytelatent's layout (entropy_model/params.json + entropy_model/consolidated.pth, "
    "or params.json + consolidated.pth)"
)
PATCHER_PREFIX = "model.patcher."
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointLayoutError(ValueError):
    """The URL holds no entropy model in a layout we accept (the message names them and what was found)."""


@dataclass
class EntropyCheckpoint:
    layout: str  # "ours" | "hf" | "bytelatent"
    config: EntropyModelConfig
    state: dict[str, torch.Tensor]  # our parameter names

    @property
    def id(self) -> str:
        return canonical_id(self.config, self.state)

    def build(self, attn_implementation: str = "sdpa") -> EntropyModel:
        model = EntropyModel(self.config, attn_implementation)
        model.load_state_dict(self.state, strict=True)
        return model


def canonical_id(config: EntropyModelConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 prefix over the config and every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256(json.dumps(entropy_model_config_to_dict(config), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


# ----- safetensors: header + ranged reads -------------------------------------------------------------------------
def _safetensors_header(fs, path: str) -> tuple[dict, int]:
    """(header JSON, byte offset where tensor data starts) from two small ranged reads."""
    head = fs.cat_file(path, start=0, end=8)
    if len(head) != 8:
        raise CheckpointLayoutError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    size = int.from_bytes(head, "little")
    if size > 100 << 20:
        raise CheckpointLayoutError(f"{path}: not a safetensors file (header length {size})")
    header = json.loads(fs.cat_file(path, start=8, end=8 + size))
    return header, 8 + size


def read_safetensors_subset(fs, path: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, fetching only their byte ranges (adjacent ones merged)."""
    header, base = _safetensors_header(fs, path)
    wanted = sorted(((name, meta) for name, meta in header.items() if name != "__metadata__"
                     and name.startswith(prefix)), key=lambda item: item[1]["data_offsets"][0])
    spans: list[list[int]] = []  # [begin, end] of merged ranges, relative to the data start
    for _, meta in wanted:
        begin, end = meta["data_offsets"]
        if spans and spans[-1][1] == begin:
            spans[-1][1] = end
        else:
            spans.append([begin, end])
    blobs = fs.cat_ranges([path] * len(spans), [base + b for b, _ in spans], [base + e for _, e in spans])
    out = {}
    for name, meta in wanted:
        begin, end = meta["data_offsets"]
        span = next(i for i, (b, e) in enumerate(spans) if b <= begin and end <= e)
        blob = blobs[span]
        if isinstance(blob, Exception) or len(blob) != spans[span][1] - spans[span][0]:
            raise CheckpointLayoutError(f"{path}: could not read the bytes of {name} ({blob!r:.200})")
        raw = blob[begin - spans[span][0] : end - spans[span][0]]
        dtype = _ST_DTYPES[meta["dtype"]]
        out[name] = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)).reshape(
            meta["shape"]).clone()
    return out


# ----- readers per layout ---------------------------------------------------------------------------------------
def _exists(fs, path: str) -> bool:
    try:
        return fs.isfile(path)
    except (FileNotFoundError, PermissionError):
        return False


def _read_ours(url: str, config: dict) -> EntropyCheckpoint:
    cfg = entropy_model_config_from_dict(config["entropy_model"])
    return EntropyCheckpoint("ours", cfg, dict(load_safetensors(read_bytes(join(url, "model.safetensors")))))


def _read_hf(url: str, config: dict, fs, path: str) -> EntropyCheckpoint:
    if not config.get("patcher_config"):
        raise CheckpointLayoutError(f"{url}: HF Blt checkpoint without a patcher_config (no entropy model in it)")
    cfg = entropy_model_config_from_dict(config["patcher_config"])
    hf_state: dict[str, torch.Tensor] = {}
    if _exists(fs, join(path, "model.safetensors")):
        hf_state = read_safetensors_subset(fs, join(path, "model.safetensors"), PATCHER_PREFIX)
    else:
        index = json.loads(fs.cat_file(join(path, "model.safetensors.index.json")))
        shards = sorted({f for name, f in index["weight_map"].items() if name.startswith(PATCHER_PREFIX)})
        for shard in shards:
            hf_state.update(read_safetensors_subset(fs, join(path, shard), PATCHER_PREFIX))
    if not hf_state:
        raise CheckpointLayoutError(f"{url}: HF Blt checkpoint has no {PATCHER_PREFIX}* tensors (no entropy model)")
    try:
        state = our_state_from_hf(entropy_param_names(cfg), hf_state, PATCHER_PREFIX)
    except KeyError as exc:
        raise CheckpointLayoutError(f"{url}: HF Blt patcher incomplete: {exc.args[0]}") from None
    return EntropyCheckpoint("hf", cfg, state)


def _read_bytelatent(url: str, directory: str) -> EntropyCheckpoint:
    params = json.loads(read_bytes(join(directory, "params.json")))
    try:
        bl.entropy_args(params)
    except ValueError as exc:
        raise CheckpointLayoutError(f"{directory}/params.json: {exc}") from None
    state = bl.load_pth(read_bytes(join(directory, "consolidated.pth")))
    if "tok_embeddings.weight" not in state:
        raise CheckpointLayoutError(
            f"{directory}/consolidated.pth is not a bytelatent entropy model (no tok_embeddings.weight; a BLT keeps "
            "its entropy model in entropy_model/)")
    model = bl.entropy_model_from_bytelatent(params, state)
    return EntropyCheckpoint("bytelatent", model.cfg, model.state_dict())


def read_entropy_checkpoint(url: str) -> EntropyCheckpoint:
    """Detect the layout at ``url`` and read the entropy model's config and weights (our names)."""
    fs, path = filesystem(url)
    config = None
    if _exists(fs, join(path, "config.json")):
        config = json.loads(fs.cat_file(join(path, "config.json")))
        if isinstance(config.get("entropy_model"), dict) and _exists(fs, join(path, "model.safetensors")):
            return _read_ours(url, config)
        has_weights = _exists(fs, join(path, "model.safetensors")) or _exists(
            fs, join(path, "model.safetensors.index.json"))
        if config.get("model_type") == "blt" and has_weights:
            return _read_hf(url, config, fs, path)
    for sub in ("entropy_model", ""):
        directory = join(url, sub) if sub else url
        dir_path = join(path, sub) if sub else path
        if _exists(fs, join(dir_path, "params.json")) and _exists(fs, join(dir_path, "consolidated.pth")):
            return _read_bytelatent(url, directory)
    raise CheckpointLayoutError(f"no entropy model at {url}: expected {ACCEPTED}; found {_describe(fs, path, config)}")


def _describe(fs, path: str, config: dict | None) -> str:
    try:
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return "nothing (no such directory)"
    if not names:
        return "an empty directory"
    text = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    if config is not None:
        text += f" (config.json keys: {', '.join(sorted(config)[:8])})"
    return text


# ----- public API -----------------------------------------------------------------------------------------------
def save_entropy_model(model: EntropyModel, url: str, extra: dict | None = None) -> str:
    """Write our layout (weights first, config last: the config marks it complete); returns its id."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"entropy_model": entropy_model_config_to_dict(model.cfg), **(extra or {})}
    config["id"] = canonical_id(model.cfg, state)
    write_bytes_atomic(join(url, "model.safetensors"), save_safetensors(state))
    write_bytes_atomic(join(url, "config.json"), json.dumps(config, indent=2, sort_keys=True).encode())
    return config["id"]


def entropy_model_id(url: str) -> str:
    """The checkpoint's id without building the model (for an HF BLT only the patcher's bytes are read)."""
    return read_entropy_checkpoint(url).id


def load_entropy_model(url: str, device: str | torch.device = "cpu", attn_implementation: str = "sdpa"):
    """(model in eval mode, id) from a checkpoint URL in any accepted layout."""
    checkpoint = read_entropy_checkpoint(url)
    return checkpoint.build(attn_implementation).to(device).eval(), checkpoint.id
