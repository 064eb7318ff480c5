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

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from blt_model import bytelatent_format as bl
from blt_model.blt import ByteLatentTransformer
from blt_model.config import BltConfig, sub_config_to_hf
from blt_model.entropy_model import EntropyModel
from blt_model.hf_interop import blt_state_to_hf, load_hf_weights_into
from pipeline.logs import get_logger
from pipeline.model_store import load_entropy_model
from pipeline.storage import filesystem, join, read_bytes, write_bytes_atomic
from training.export import hf_patching_config
from training.model_source import read_run_patching

from .common import add_config_flag, parse_with_config, run_main

log = get_logger(__name__)


def _json(url: str) -> dict | None:
    fs, path = filesystem(url)
    return json.loads(fs.cat_file(path)) if fs.isfile(path) else None


def read_hf_state(url: str) -> dict[str, torch.Tensor]:
    fs, path = filesystem(url)
    if fs.isfile(join(path, "model.safetensors")):
        return dict(load_safetensors(read_bytes(join(url, "model.safetensors"))))
    index = _json(join(url, "model.safetensors.index.json"))
    if index is None:
        raise FileNotFoundError(f"{url}: no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_safetensors(read_bytes(join(url, shard))))
    return state


def write_hf(url: str, config: dict, state: dict[str, torch.Tensor]) -> str:
    """config.json + model.safetensors (weights first: the config marks the directory complete)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_bytes_atomic(join(url, "model.safetensors"), save_safetensors(tensors, metadata={"format": "pt"}))
    write_bytes_atomic(join(url, "config.json"), json.dumps(config, indent=2, sort_keys=True).encode())
    return url


def _hf_config(cfg: BltConfig, with_patcher: bool) -> dict:
    config = cfg.to_hf_dict()
    config["patch_in_forward"] = with_patcher
    if with_patcher:
        config["patcher_config"] = sub_config_to_hf(cfg.patcher_config)
    return config


def detect(url: str) -> str:
    """'bytelatent' | 'hf' | 'ours' (a training run with an hf/ export), from the files present."""
    config = _json(join(url, "config.json"))
    if config is not None and config.get("model_type") == "blt":
        return "hf"
    for name in ("config.json", "params.json"):
        data = config if name == "config.json" else _json(join(url, name))
        if data is not None:
            try:
                bl.blt_args(data)
                return "bytelatent"
            except ValueError:
                pass
    if (_json(join(url, "hf", "config.json")) or {}).get("model_type") == "blt":
        return "ours"
    raise ValueError(f"{url}: not a BLT checkpoint we can convert: expected a bytelatent BLT (config.json with "
                     "'args' + model.safetensors, or params.json with 'model' + consolidated.pth, each with "
                     "entropy_model/), an HF Blt directory (config.json with model_type 'blt'), or a training "
                     "output with hf/")


def bytelatent_to_hf(src: str, dst: str) -> str:
    config = _json(join(src, "config.json"))
    if config is None or "args" not in config:
        config = _json(join(src, "params.json"))
        state = bl.load_pth(read_bytes(join(src, "consolidated.pth")))
    else:
        state = dict(load_safetensors(read_bytes(join(src, "model.safetensors"))))
    entropy_params = _json(join(src, "entropy_model", "params.json"))
    if entropy_params is None:
        raise FileNotFoundError(f"{src}: no entropy_model/params.json (a bytelatent BLT keeps its patcher there)")
    entropy_state = bl.load_pth(read_bytes(join(src, "entropy_model", "consolidated.pth")))
    cfg = bl.blt_config_from_bytelatent(config, entropy_params)
    return write_hf(dst, _hf_config(cfg, True), bl.blt_state_to_hf(state, entropy_state))


def hf_to_bytelatent(src: str, dst: str) -> str:
    hf_config = _json(join(src, "config.json"))
    cfg = BltConfig.from_hf_dict(hf_config)
    state, entropy_state = bl.blt_state_from_hf(read_hf_state(src), bl.num_hash_tables(cfg))
    patcher_args = bl.patcher_args_from_config(cfg)
    params = {"model": bl.bytelatent_args_from_config(cfg), "data": {"patcher_args": patcher_args}}
    if entropy_state is not None:
        entropy_params = bl.entropy_params_from_config(cfg.patcher_config, patcher_args)
        params["entropy_model"] = entropy_params["entropy_model"]
        params["model"]["entropy_model_checkpoint_dir"] = "entropy_model"
        write_bytes_atomic(join(dst, "entropy_model", "consolidated.pth"), bl.save_pth(entropy_state))
        write_bytes_atomic(join(dst, "entropy_model", "params.json"), json.dumps(entropy_params, indent=2).encode())
    write_bytes_atomic(join(dst, "consolidated.pth"), bl.save_pth(state))
    write_bytes_atomic(join(dst, "params.json"), json.dumps(params, indent=2).encode())
    return dst


def ours_to_hf(src: str, dst: str, entropy_model: str | None) -> str:
    """Our training run's HF export, re-written with a patcher (``--entropy-model``, any accepted layout; else the
    export's own, else the one the run's patch set was scored with) and the run's patching rule in HF's fields."""
    hf_dir = join(src, "hf")
    cfg = BltConfig.from_hf_dict(_json(join(hf_dir, "config.json")))
    state = read_hf_state(hf_dir)
    model = ByteLatentTransformer(cfg)
    load_hf_weights_into(model, state, "model.")
    run = read_run_patching(src)
    patcher = None
    if entropy_model is None and any(k.startswith("model.patcher.") for k in state):
        patcher = EntropyModel(cfg.patcher_config)
        load_hf_weights_into(patcher, state, "model.patcher.")
    elif entropy_model is None and run is not None and run.params.needs_entropies:
        entropy_model = run.entropy_model
    if entropy_model:
        patcher, _ = load_entropy_model(entropy_model)
    if patcher is not None:
        cfg.patcher_config = patcher.cfg
    config = _hf_config(cfg, patcher is not None)
    if run is not None:
        config.update(hf_patching_config(run.params, patcher is not None, run.to_dict()))
    return write_hf(dst, config, blt_state_to_hf(model, patcher))


def convert(src: str, dst: str, to: str | None = None, entropy_model: str | None = None) -> dict:
    kind = detect(src)
    target = to or ("bytelatent" if kind == "hf" else "hf")
    if kind == "bytelatent" and target == "hf":
        out = bytelatent_to_hf(src, dst)
    elif kind == "hf" and target == "bytelatent":
        out = hf_to_bytelatent(src, dst)
    elif kind == "ours" and target == "hf":
        out = ours_to_hf(src, dst, entropy_model)
    elif kind == "ours" and target == "bytelatent":
        out = hf_to_bytelatent(join(src, "hf"), dst)
    else:
        raise ValueError(f"{src} is already in {kind} layout; nothing to convert to {target}")
    log.info("converted %s (%s) -> %s (%s)", src, kind, out, target)
    return {"source": src, "source_layout": kind, "output": out, "layout": target}


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
