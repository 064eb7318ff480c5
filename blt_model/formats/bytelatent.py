"""facebookresearch/blt ("bytelatent") checkpoints <-> HF Blt names <-> our modules: detect, load, save.

Facts (from HF's ``convert_blt_weights_to_hf.py`` and bytelatent's ``base_transformer.py`` / ``model/blt.py``):

* Layouts. The hub release: ``config.json`` (``{"args": ByteLatentTransformerArgs}``) + ``model.safetensors``;
  training output: ``params.json`` (``{"model": ..., "entropy_model": ..., "data": {"patcher_args": ...}}``) +
  ``consolidated.pth`` (``{"model": state_dict}``). Either way the entropy model sits in ``entropy_model/``
  as ``params.json`` (its args under ``"entropy_model"``) + ``consolidated.pth``.
* Names. HF's names are bytelatent's after plain substring renames (``_RENAMES``); the patcher's names get a
  ``patcher.`` prefix first; ``local_decoder.output`` becomes the top-level ``lm_head``; the per-function hash
  tables ``encoder_hash_tok_embedding.{i}`` are stacked in order ``i`` into one table; everything else gains
  ``model.``.
* RoPE. bytelatent rotates adjacent pairs (``reshape(..., -1, 1, 2)`` times 2x2 rotations) and so do HF's Blt
  (``rotate_half`` on ``x[..., ::2]`` / ``x[..., 1::2]``) and our layers: q/k weights need no permutation, and
  HF's converter applies none.
* Feed-forward width: ``multiple_of * ceil(int(ffn_dim_multiplier * int(8 * dim / 3)) / multiple_of)``
  (bytelatent; HF's converter drops ``ffn_dim_multiplier``, which is 1.0 or absent in released params).
* The entropy model is bytelatent's ``LMTransformer`` with sliding-window attention; bytelatent's
  ``load_entropy_model`` always uses a 512 window, which we keep unless ``params.json`` names one.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from ..config import (
    BltConfig,
    EntropyModelConfig,
    GlobalTransformerConfig,
    LocalDecoderConfig,
    LocalEncoderConfig,
)
from ..entropy_model import EntropyModel
from ..patching import ENTROPY_THRESHOLD
from .base import (
    BltCheckpoint,
    CheckpointFormat,
    CheckpointLayoutError,
    CheckpointStore,
    EntropyCheckpoint,
    read_json,
    write_json,
)
from .hf import PATCHER_PREFIX, load_hf_weights_into, state_dict_to_hf

_RENAMES = (
    (".attention.", ".self_attn."),
    (".feed_forward.", ".mlp."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
    (".tok_embeddings.", ".embed_tokens."),
    (".cross_attn_norm_q.", ".q_norm."),
    (".cross_attn_norm_kv.", ".k_norm."),
    (".w1.", ".gate_proj."),
    (".w2.", ".down_proj."),
    (".w3.", ".up_proj."),
    (".wq.", ".q_proj."),
    (".wk.", ".k_proj."),
    (".wv.", ".v_proj."),
    (".wo.", ".o_proj."),
    (".output.", ".lm_head."),
)
_HASH = "encoder_hash_tok_embedding"
ENTROPY_SLIDING_WINDOW = 512  # bytelatent's load_entropy_model hard-codes it


# ----- names ---------------------------------------------------------------------------------------------------
def bytelatent_name_to_hf(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def hf_name_to_bytelatent(name: str) -> str:
    for old, new in reversed(_RENAMES):
        name = name.replace(new, old)
    return name


def unwrap_state(obj: Any) -> dict[str, torch.Tensor]:
    """A consolidated.pth holds ``{"model": state}`` (training) or ``{"state_dict": ...}`` or the state itself."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def load_pth(data: bytes) -> dict[str, torch.Tensor]:
    """Tensors from a consolidated.pth, safely (``weights_only``: no pickled code runs)."""
    return unwrap_state(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def save_pth(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, buffer)
    return buffer.getvalue()


# ----- feed-forward width rule ----------------------------------------------------------------------------------
def ffn_hidden_size(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    hidden = int(8 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def ffn_params_for(dims_and_sizes: list[tuple[int, int]]) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that make bytelatent's rule give every (dim -> intermediate) pair.

    Prefers forms HF's converter also reads right (no multiplier): 256, then the largest fitting multiple_of.
    """
    for multiple_of in [256] + list(range(max(s for _, s in dims_and_sizes), 0, -1)):
        if all(ffn_hidden_size(d, multiple_of) == s for d, s in dims_and_sizes):
            return multiple_of, None
    dim, size = dims_and_sizes[0]
    multiplier = (size + 0.5) / int(8 * dim / 3)
    if all(ffn_hidden_size(d, 1, multiplier) == s for d, s in dims_and_sizes):
        return 1, multiplier
    raise ValueError(f"intermediate sizes {dims_and_sizes} cannot be written as bytelatent's multiple_of/ffn rule")


# ----- entropy model --------------------------------------------------------------------------------------------
def entropy_args(params: dict[str, Any]) -> dict[str, Any]:
    """The entropy model's args from a params.json (its ``entropy_model`` entry)."""
    args = params.get("entropy_model")
    if not isinstance(args, dict) or "dim" not in args:
        raise ValueError("params.json has no 'entropy_model' entry with the model's args (dim, n_layers, ...)")
    return args


def entropy_config_from_params(params: dict[str, Any]) -> EntropyModelConfig:
    args = entropy_args(params)
    dim = int(args["dim"])
    heads = int(args.get("n_heads") or dim // int(args["head_dim"]))
    if args.get("head_dim") and int(args["head_dim"]) != dim // heads:
        raise ValueError(f"head_dim {args['head_dim']} != dim / n_heads: not supported")
    return EntropyModelConfig(
        vocab_size=int(args.get("vocab_size", 260)),
        hidden_size=dim,
        num_attention_heads=heads,
        num_key_value_heads=int(args.get("n_kv_heads") or heads),
        num_hidden_layers=int(args["n_layers"]),
        intermediate_size=ffn_hidden_size(dim, int(args.get("multiple_of", 256)), args.get("ffn_dim_multiplier")),
        rms_norm_eps=float(args.get("norm_eps", 1e-5)),
        rope_theta=float(args.get("rope_theta", 10000.0)),
        max_position_embeddings=int(args.get("max_seqlen", 1024)),
        sliding_window=int(args.get("sliding_window") or ENTROPY_SLIDING_WINDOW),
    )


def entropy_params_from_config(cfg: EntropyModelConfig, patcher_args: dict | None = None) -> dict[str, Any]:
    """params.json content bytelatent's ``load_entropy_model`` (and HF's converter) read back to ``cfg``."""
    multiple_of, multiplier = ffn_params_for([(cfg.hidden_size, cfg.intermediate_size)])
    args = {
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads, "head_dim": None, "max_seqlen": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size, "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "multiple_of": multiple_of, "ffn_dim_multiplier": multiplier, "sliding_window": cfg.sliding_window,
        "attn_bias_type": "local_block_causal", "attn_impl": "xformers", "weight_tying": False,
    }
    return {"entropy_model": args, "data": {"patcher_args": dict(patcher_args or {})}}


def entropy_state_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """bytelatent entropy-model names -> HF ``BltPatcher`` names (under ``prefix``, e.g. ``model.patcher.``)."""
    out = {}
    for name, tensor in state.items():
        hf = bytelatent_name_to_hf("patcher." + name)[len("patcher."):]
        out[prefix + hf] = tensor
    return out


def entropy_state_from_hf(hf_state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in hf_state.items():
        if name.startswith(prefix):
            out[hf_name_to_bytelatent("patcher." + name[len(prefix):])[len("patcher."):]] = tensor
    return out


def entropy_model_from_bytelatent(
    params: dict[str, Any], state: dict[str, torch.Tensor], attn_implementation: str = "sdpa"
) -> EntropyModel:
    cfg = entropy_config_from_params(params)
    width = state.get("layers.0.feed_forward.w1.weight")
    if width is not None and width.shape[0] != cfg.intermediate_size:
        raise ValueError(f"params.json gives feed-forward width {cfg.intermediate_size} (dim, multiple_of, "
                         f"ffn_dim_multiplier) but the weights have {width.shape[0]}")
    model = EntropyModel(cfg, attn_implementation)
    load_hf_weights_into(model, entropy_state_to_hf(state), "")
    return model


def entropy_model_to_bytelatent(model: EntropyModel, patcher_args: dict | None = None):
    """(params.json dict, state dict under bytelatent names)."""
    return entropy_params_from_config(model.cfg, patcher_args), entropy_state_from_hf(state_dict_to_hf(model, ""))


# ----- the whole BLT --------------------------------------------------------------------------------------------
def blt_args(config: dict[str, Any]) -> dict[str, Any]:
    """ByteLatentTransformerArgs from the hub's config.json (``args``) or a training params.json (``model``)."""
    for key in ("args", "model"):
        if isinstance(config.get(key), dict) and "dim_global" in config[key]:
            return config[key]
    raise ValueError("not a bytelatent BLT config: no 'args' or 'model' entry with dim_global")


def _sub(cls: type, dim: int, heads: int, kv_heads: int | None, layers: int, args: dict, max_len: int, **extra):
    return cls(
        hidden_size=dim, num_attention_heads=heads, num_key_value_heads=kv_heads or heads, num_hidden_layers=layers,
        intermediate_size=ffn_hidden_size(dim, int(args.get("multiple_of", 256)), args.get("ffn_dim_multiplier")),
        rms_norm_eps=float(args.get("norm_eps", 1e-5)), rope_theta=float(args.get("rope_theta", 10000.0)),
        max_position_embeddings=max_len, dropout=float(args.get("dropout", 0.0)), **extra,
    )


def blt_config_from_bytelatent(config: dict[str, Any], entropy_params: dict[str, Any]) -> BltConfig:
    """Our ``BltConfig`` (HF field names) from bytelatent's args, by the rules of HF's ``merge_configurations``.

    Where HF's converter leaves a field at HF's default (``local_attention_window_len``; ``norm_eps`` it writes
    under a name HF ignores) we take bytelatent's value, so the HF model computes what bytelatent computes.
    """
    args = blt_args(config)
    patcher_args = (entropy_params.get("data") or {}).get("patcher_args") or {}
    k = int(args.get("cross_attn_k") or 2)
    local_len = int(args.get("max_encoder_seq_length") or args.get("max_seqlen", 1024))
    vocab = int(args.get("vocab_size", 260))
    common = dict(vocab_size=vocab, cross_attn_k=k, hidden_size_global=int(args["dim_global"]))
    encoder = _sub(LocalEncoderConfig, int(args["dim_local_encoder"]), int(args.get("n_heads_local_encoder", 8)),
                   args.get("n_kv_heads"), int(args.get("n_layers_local_encoder", 8)), args, local_len,
                   cross_attn_all_layers=bool(args.get("cross_attn_all_layers_encoder", False)), **common)
    decoder = _sub(LocalDecoderConfig, int(args["dim_local_decoder"]), int(args.get("n_heads_local_decoder", 8)),
                   args.get("n_kv_heads"), int(args.get("n_layers_local_decoder", 8)), args, local_len,
                   cross_attn_all_layers=bool(args.get("cross_attn_all_layers_decoder", False)), **common)
    global_cfg = _sub(GlobalTransformerConfig, int(args["dim_global"]), int(args.get("n_heads_global", 8)),
                      args.get("n_kv_heads_global"), int(args.get("n_layers_global", 8)), args,
                      int(args.get("max_seqlen", 1024)))
    sizes = args.get("encoder_hash_byte_group_size") or [3, 4, 5, 6, 7, 8]
    if isinstance(sizes, str):
        sizes = [int(x) for x in sizes.split(",") if x]
    patch_size = patcher_args.get("patch_size", args.get("patch_size") or 4)
    return BltConfig(
        vocab_size=vocab,
        max_position_embeddings=int(args.get("max_seqlen", 1024)),
        patch_in_forward=True,
        patch_size=int(patch_size),
        patching_mode="entropy",
        patching_threshold=float(patcher_args.get("threshold", args.get("patching_threshold") or ENTROPY_THRESHOLD)),
        patching_batch_size=int(patcher_args.get("patching_batch_size", 1)),
        max_patch_length=patcher_args.get("max_patch_length", args.get("max_patch_length")),
        local_attention_window_len=args.get("local_attention_window_len", 512),
        cross_attn_k=k,
        encoder_hash_byte_group_size=list(sizes),
        encoder_hash_byte_group_vocab=int(args.get("encoder_hash_byte_group_vocab", 30000)),
        encoder_hash_byte_group_nb_functions=int(args.get("encoder_hash_byte_group_nb_functions", 3)),
        rope_theta=float(args.get("rope_theta", 10000.0)),
        patcher_config=entropy_config_from_params(entropy_params),
        encoder_config=encoder,
        decoder_config=decoder,
        global_config=global_cfg,
    )


def blt_state_to_hf(
    state: dict[str, torch.Tensor], entropy_state: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """bytelatent BLT (+ entropy model) tensors -> HF ``BltForCausalLM`` names (HF's merge_weights rules)."""
    out: dict[str, torch.Tensor] = {}
    tables = sorted((k for k in state if k.startswith(_HASH + ".") and k.split(".")[-2].isdigit()),
                    key=lambda k: int(k.split(".")[-2]))
    for name, tensor in state.items():
        if name in tables:
            continue
        hf = bytelatent_name_to_hf(name)
        out["lm_head.weight" if hf == "local_decoder.lm_head.weight" else "model." + hf] = tensor
    if tables:
        out[f"model.{_HASH}.weight"] = torch.cat([state[k] for k in tables], dim=0)
    if entropy_state is not None:
        out.update(entropy_state_to_hf(entropy_state, PATCHER_PREFIX))
    return out


def blt_state_from_hf(hf_state: dict[str, torch.Tensor], num_tables: int):
    """HF names -> (bytelatent BLT state, entropy state or None): the exact inverse of ``blt_state_to_hf``."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.startswith(PATCHER_PREFIX):
            continue
        if name == f"model.{_HASH}.weight":
            for i, piece in enumerate(tensor.chunk(num_tables, dim=0)):
                state[f"{_HASH}.{i}.weight"] = piece.clone()
            continue
        hf = "local_decoder.lm_head.weight" if name == "lm_head.weight" else name.removeprefix("model.")
        state[hf_name_to_bytelatent(hf)] = tensor
    patcher = entropy_state_from_hf(hf_state, PATCHER_PREFIX)
    return state, (patcher or None)


def bytelatent_args_from_config(cfg: BltConfig) -> dict[str, Any]:
    """ByteLatentTransformerArgs that rebuild ``cfg`` (inverse of ``blt_config_from_bytelatent``)."""
    enc, dec, glob = cfg.encoder_config, cfg.decoder_config, cfg.global_config
    if enc.num_key_value_heads != dec.num_key_value_heads:
        raise ValueError("bytelatent has one n_kv_heads for both local models")
    sizes = [(enc.hidden_size, enc.intermediate_size), (dec.hidden_size, dec.intermediate_size),
             (glob.hidden_size, glob.intermediate_size)]
    multiple_of, multiplier = ffn_params_for(sizes)
    if len({enc.rms_norm_eps, dec.rms_norm_eps, glob.rms_norm_eps}) > 1 or len(
            {enc.rope_theta, dec.rope_theta, glob.rope_theta}) > 1:
        raise ValueError("bytelatent has one norm_eps and one rope_theta for every component")
    return {
        "vocab_size": cfg.vocab_size, "dim": glob.hidden_size, "n_layers": glob.num_hidden_layers,
        "n_heads": glob.num_attention_heads, "max_seqlen": cfg.max_position_embeddings,
        "max_encoder_seq_length": enc.max_position_embeddings,
        "dim_global": glob.hidden_size, "dim_local_encoder": enc.hidden_size, "dim_local_decoder": dec.hidden_size,
        "n_layers_global": glob.num_hidden_layers, "n_layers_local_encoder": enc.num_hidden_layers,
        "n_layers_local_decoder": dec.num_hidden_layers, "n_heads_global": glob.num_attention_heads,
        "n_heads_local_encoder": enc.num_attention_heads, "n_heads_local_decoder": dec.num_attention_heads,
        "n_kv_heads": enc.num_key_value_heads, "n_kv_heads_global": glob.num_key_value_heads,
        "multiple_of": multiple_of, "ffn_dim_multiplier": multiplier, "norm_eps": enc.rms_norm_eps,
        "rope_theta": enc.rope_theta, "dropout": enc.dropout,
        "cross_attn_encoder": True, "cross_attn_decoder": True, "cross_attn_k": cfg.cross_attn_k,
        "cross_attn_all_layers_encoder": enc.cross_attn_all_layers,
        "cross_attn_all_layers_decoder": dec.cross_attn_all_layers, "cross_attn_init_by_pooling": True,
        "cross_attn_nheads": enc.num_attention_heads, "downsampling_by_pooling": "max",
        "use_local_encoder_transformer": True, "non_linearity": "swiglu", "use_rope": True,
        "local_attention_window_len": cfg.local_attention_window_len, "patch_in_forward": True,
        "patch_size": cfg.patch_size, "patching_mode": "entropy", "patching_threshold": cfg.patching_threshold,
        "max_patch_length": cfg.max_patch_length, "patching_batch_size": cfg.patching_batch_size,
        "encoder_hash_byte_group_size": list(cfg.encoder_hash_byte_group_size),
        "encoder_hash_byte_group_vocab": cfg.encoder_hash_byte_group_vocab,
        "encoder_hash_byte_group_nb_functions": cfg.encoder_hash_byte_group_nb_functions,
        "encoder_enable_byte_group_hash": True, "pm_size": 0, "weight_tying": False,
    }


def patcher_args_from_config(cfg: BltConfig) -> dict[str, Any]:
    return {"patching_mode": "entropy", "threshold": cfg.patching_threshold, "patch_size": cfg.patch_size,
            "max_patch_length": cfg.max_patch_length, "patching_batch_size": cfg.patching_batch_size}


def num_hash_tables(cfg: BltConfig) -> int:
    return cfg.encoder_hash_byte_group_nb_functions * len(cfg.encoder_hash_byte_group_size)


# ----- the layout -------------------------------------------------------------------------------------------------
def _entropy_dir(store: CheckpointStore) -> CheckpointStore | None:
    """Where the entropy model's params.json + consolidated.pth are: ``entropy_model/`` (a BLT) or the store."""
    for candidate in (store.child("entropy_model"), store):
        if candidate.exists("params.json") and candidate.exists("consolidated.pth"):
            return candidate
    return None


def is_entropy(store: CheckpointStore) -> bool:
    return _entropy_dir(store) is not None


def read_entropy(store: CheckpointStore) -> EntropyCheckpoint:
    directory = _entropy_dir(store)
    params = read_json(directory, "params.json")
    try:
        entropy_args(params)
    except ValueError as exc:
        raise CheckpointLayoutError(f"{directory.location}/params.json: {exc}") from None
    state = load_pth(directory.read("consolidated.pth"))
    if "tok_embeddings.weight" not in state:
        raise CheckpointLayoutError(
            f"{directory.location}/consolidated.pth is not a bytelatent entropy model (no tok_embeddings.weight; "
            "a BLT keeps its entropy model in entropy_model/)")
    model = entropy_model_from_bytelatent(params, state)
    return EntropyCheckpoint("bytelatent", model.cfg, model.state_dict())


def _blt_config_file(store: CheckpointStore) -> tuple[str, dict] | None:
    """The hub release's config.json {"args"} or training output's params.json {"model"}, whichever is here."""
    for name in ("config.json", "params.json"):
        data = read_json(store, name)
        if data is not None:
            try:
                blt_args(data)
                return name, data
            except ValueError:
                pass
    return None


def is_blt(store: CheckpointStore) -> bool:
    return _blt_config_file(store) is not None


def read_blt(store: CheckpointStore) -> BltCheckpoint:
    name, config = _blt_config_file(store)
    if name == "config.json":
        state = dict(load_safetensors(store.read("model.safetensors")))
    else:
        state = load_pth(store.read("consolidated.pth"))
    entropy_params = read_json(store, "entropy_model/params.json")
    if entropy_params is None:
        raise FileNotFoundError(
            f"{store.location}: no entropy_model/params.json (a bytelatent BLT keeps its patcher there)")
    entropy_state = load_pth(store.read("entropy_model/consolidated.pth"))
    cfg = blt_config_from_bytelatent(config, entropy_params)
    return BltCheckpoint(cfg, blt_state_to_hf(state, entropy_state))


def write_blt(store: CheckpointStore, checkpoint: BltCheckpoint) -> None:
    """bytelatent's training layout: params.json + consolidated.pth (+ entropy_model/ when a patcher is present)."""
    cfg = checkpoint.config
    state, entropy_state = blt_state_from_hf(checkpoint.hf_state, num_hash_tables(cfg))
    patcher_args = patcher_args_from_config(cfg)
    params = {"model": bytelatent_args_from_config(cfg), "data": {"patcher_args": patcher_args}}
    if entropy_state is not None:
        entropy_params = entropy_params_from_config(cfg.patcher_config, patcher_args)
        params["entropy_model"] = entropy_params["entropy_model"]
        params["model"]["entropy_model_checkpoint_dir"] = "entropy_model"
        store.write("entropy_model/consolidated.pth", save_pth(entropy_state))
        write_json(store, "entropy_model/params.json", entropy_params, sort_keys=False)
    store.write("consolidated.pth", save_pth(state))
    write_json(store, "params.json", params, sort_keys=False)


FORMAT = CheckpointFormat("bytelatent", is_entropy=is_entropy, read_entropy=read_entropy, is_blt=is_blt,
                          read_blt=read_blt, write_blt=write_blt)
