"""Entropy-model layouts (ours, HF Blt, bytelatent) at any URL, one content id; ``blt convert`` both ways.

The bytelatent side is checked against a re-statement, written here, of HF's ``convert_blt_weights_to_hf.py``
rules (renames, ``patcher.`` prefix, stacked hash tables, ``local_decoder.output`` -> ``lm_head``, intermediate
size rule), run through HF's own ``BltForCausalLM`` / ``BltPatcher``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import fsspec
import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
from corpus import jsonl_bytes, make_docs, write_object  # noqa: E402
from hf_reference import bytelatent_compatible, random_hf_config, random_hf_model  # noqa: E402
from transformers import BltConfig as HFBltConfig  # noqa: E402
from transformers import BltForCausalLM  # noqa: E402
from transformers.models.blt.modeling_blt import BltPatcher  # noqa: E402

from blt_model.patching import PatchingParams, patch_lengths  # noqa: E402
from jobs.convert import convert  # noqa: E402
from pipeline.dataset.model_store import (  # noqa: E402
    CheckpointLayoutError,
    entropy_model_id,
    load_entropy_model,
    save_entropy_model,
)

# ----- a re-statement of HF's conversion rules ----------------------------------------------------------------------
HF_RENAMES = {
    ".attention.": ".self_attn.", ".feed_forward.": ".mlp.", ".attention_norm.": ".input_layernorm.",
    ".ffn_norm.": ".post_attention_layernorm.", ".tok_embeddings.": ".embed_tokens.",
    ".cross_attn_norm_q.": ".q_norm.", ".cross_attn_norm_kv.": ".k_norm.", ".w1.": ".gate_proj.",
    ".w2.": ".down_proj.", ".w3.": ".up_proj.", ".wq.": ".q_proj.", ".wk.": ".k_proj.", ".wv.": ".v_proj.",
    ".wo.": ".o_proj.", ".output.": ".lm_head.",
}


def hf_rules_weights(main: dict, entropy: dict) -> dict:
    unified = dict(main)
    unified.update({f"patcher.{k}": v for k, v in entropy.items()})
    renamed = {}
    for key, tensor in unified.items():
        for old, new in HF_RENAMES.items():
            if old in key:
                key = key.replace(old, new)
        renamed[key] = tensor
    renamed["lm_head.weight"] = renamed.pop("local_decoder.lm_head.weight")
    out = {k if k == "lm_head.weight" or k.startswith("model.") else f"model.{k}": v for k, v in renamed.items()}
    tables = sorted((k for k in out if "encoder_hash_tok_embedding." in k and k.split(".")[-2].isdigit()),
                    key=lambda k: int(k.split(".")[-2]))
    out["model.encoder_hash_tok_embedding.weight"] = torch.cat([out.pop(k) for k in tables])
    return out


def hf_rules_intermediate(dim: int, multiple_of: int) -> int:
    return multiple_of * ((int(8 * dim / 3) + multiple_of - 1) // multiple_of)


def hf_rules_patcher_config(entropy_params: dict) -> dict:
    p = entropy_params["entropy_model"]
    return dict(vocab_size=p["vocab_size"], hidden_size=p["dim"], num_hidden_layers=p["n_layers"],
                num_attention_heads=p["n_heads"], num_key_value_heads=p.get("n_kv_heads"),
                max_position_embeddings=p["max_seqlen"], rope_theta=p.get("rope_theta", 10000.0),
                intermediate_size=hf_rules_intermediate(p["dim"], p.get("multiple_of", 256)),
                # HF's converter leaves the window at HF's default; bytelatent's loader uses 512 or the params'.
                sliding_window=p.get("sliding_window") or 512)


def hf_rules_config(args: dict, entropy_params: dict) -> HFBltConfig:
    def sub(dim, heads, kv, layers, max_len, **extra):
        return dict(hidden_size=dim, num_attention_heads=heads, num_key_value_heads=kv, num_hidden_layers=layers,
                    max_position_embeddings=max_len, rope_theta=args["rope_theta"],
                    intermediate_size=hf_rules_intermediate(dim, args["multiple_of"]), **extra)

    local_len = args.get("max_encoder_seq_length") or args["max_seqlen"]
    k = args["cross_attn_k"]
    cfg = HFBltConfig(
        vocab_size=args["vocab_size"], max_position_embeddings=args["max_seqlen"], patch_in_forward=True,
        patch_size=args["patch_size"], patching_threshold=args["patching_threshold"], cross_attn_k=k,
        encoder_hash_byte_group_size=args["encoder_hash_byte_group_size"],
        encoder_hash_byte_group_vocab=args["encoder_hash_byte_group_vocab"],
        encoder_hash_byte_group_nb_functions=args["encoder_hash_byte_group_nb_functions"],
        local_attention_window_len=args["local_attention_window_len"],
        patcher_config=hf_rules_patcher_config(entropy_params),
        encoder_config=sub(args["dim_local_encoder"], args["n_heads_local_encoder"], args["n_kv_heads"],
                           args["n_layers_local_encoder"], local_len, cross_attn_k=k,
                           hidden_size_global=args["dim_global"],
                           cross_attn_all_layers=args["cross_attn_all_layers_encoder"]),
        decoder_config=sub(args["dim_local_decoder"], args["n_heads_local_decoder"], args["n_kv_heads"],
                           args["n_layers_local_decoder"], local_len, cross_attn_k=k,
                           hidden_size_global=args["dim_global"],
                           cross_attn_all_layers=args["cross_attn_all_layers_decoder"]),
        global_config=sub(args["dim_global"], args["n_heads_global"], args["n_kv_heads_global"],
                          args["n_layers_global"], args["max_seqlen"]),
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


# ----- random checkpoints in each layout --------------------------------------------------------------------------
def random_bytelatent_entropy_model(path, seed: int = 0, dim: int = 32, layers: int = 2, heads: int = 4,
                                    kv_heads: int = 2, window: int = 16):
    """bytelatent's LMTransformer names (tok_embeddings, layers.i.attention.wq, feed_forward.w1, ...), random."""
    gen = torch.Generator().manual_seed(seed)
    hidden = hf_rules_intermediate(dim, 16)
    head_dim = dim // heads

    def rnd(*shape, scale=None):
        return torch.randn(*shape, generator=gen) * (scale if scale is not None else shape[-1] ** -0.5)

    state = {"tok_embeddings.weight": rnd(260, dim, scale=1.0), "norm.weight": 1 + 0.1 * rnd(dim, scale=1.0),
             "output.weight": rnd(260, dim) * 8}
    for i in range(layers):
        p = f"layers.{i}."
        state.update({
            p + "attention.wq.weight": rnd(heads * head_dim, dim), p + "attention.wk.weight": rnd(kv_heads * head_dim, dim),
            p + "attention.wv.weight": rnd(kv_heads * head_dim, dim), p + "attention.wo.weight": rnd(dim, dim),
            p + "feed_forward.w1.weight": rnd(hidden, dim), p + "feed_forward.w3.weight": rnd(hidden, dim),
            p + "feed_forward.w2.weight": rnd(dim, hidden), p + "attention_norm.weight": 1 + 0.1 * rnd(dim, scale=1.0),
            p + "ffn_norm.weight": 1 + 0.1 * rnd(dim, scale=1.0),
        })
    params = {"entropy_model": {"dim": dim, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv_heads,
                                "max_seqlen": 8192, "vocab_size": 260, "multiple_of": 16, "ffn_dim_multiplier": 1.0,
                                "norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": window},
              "data": {"patcher_args": {"threshold": 1.335442066192627, "patch_size": 4}}}
    fs, root = fsspec.core.url_to_fs(str(path))
    fs.makedirs(root, exist_ok=True)
    buffer = __import__("io").BytesIO()
    torch.save({"model": state}, buffer)
    fs.pipe(f"{root}/consolidated.pth", buffer.getvalue())
    fs.pipe(f"{root}/params.json", json.dumps(params).encode())
    return params, state


def _hf_blt(tmp_path, seed: int = 1, k: int = 2):
    cfg = bytelatent_compatible(random_hf_config(seed, cross_attn_k=k))
    model = random_hf_model(cfg, seed)
    path = tmp_path / f"hf{seed}"
    model.save_pretrained(path)
    return model, path


def _upload(local_dir, url: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    for f in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        fs.pipe(f"{root}/{f.relative_to(local_dir).as_posix()}", f.read_bytes())


# ----- entropy models -----------------------------------------------------------------------------------------------
def test_bytelatent_entropy_model_matches_hf_patcher_by_hf_rules(tmp_path):
    params, state = random_bytelatent_entropy_model(tmp_path / "em")
    ours, model_id = load_entropy_model(str(tmp_path / "em"))
    reference = BltPatcher(_patcher_config(params)).eval()
    hf_state = {k.removeprefix("model.patcher."): v for k, v in hf_rules_weights(
        {"local_decoder.output.weight": torch.zeros(1), "encoder_hash_tok_embedding.0.weight": torch.zeros(1, 1)},
        state).items() if k.startswith("model.patcher.")}
    reference.load_state_dict(hf_state, strict=True)
    ids = torch.randint(4, 260, (2, 70), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _, _ = reference(ids, patch_size=4, threshold=1.0)
        got = ours.entropies(ids)
    assert (expected - got).abs().max().item() < 1e-4
    assert model_id == entropy_model_id(str(tmp_path / "em"))


def _patcher_config(params):
    from transformers.models.blt.configuration_blt import BltPatcherConfig

    cfg = BltPatcherConfig(**hf_rules_patcher_config(params))
    cfg._attn_implementation = "sdpa"
    return cfg


def test_same_weights_same_id_in_every_layout(tmp_path):
    """An HF Blt dir (patcher inside), our checkpoint and bytelatent's layout of the same patcher: one id."""
    from blt_model.formats.bytelatent import entropy_model_to_bytelatent
    from blt_model.formats.bytelatent import save_pth as to_pth

    hf, hf_dir = _hf_blt(tmp_path)
    from_hf, hf_id = load_entropy_model(str(hf_dir))
    save_entropy_model(from_hf, str(tmp_path / "ours"))
    params, state = entropy_model_to_bytelatent(from_hf)
    (tmp_path / "bl" / "entropy_model").mkdir(parents=True)
    (tmp_path / "bl" / "entropy_model" / "params.json").write_text(json.dumps(params))
    (tmp_path / "bl" / "entropy_model" / "consolidated.pth").write_bytes(to_pth(state))
    (tmp_path / "bare").mkdir()
    for name in ("params.json", "consolidated.pth"):
        (tmp_path / "bare" / name).write_bytes((tmp_path / "bl" / "entropy_model" / name).read_bytes())
    ids = {entropy_model_id(str(tmp_path / d)) for d in ("ours", "bl", "bare")}
    assert ids == {hf_id}
    ids_tokens = torch.randint(4, 260, (1, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _, _ = hf.model.patcher(ids_tokens, patch_size=4, threshold=1.0)
        for d in ("ours", "bl", "bare"):
            model, _ = load_entropy_model(str(tmp_path / d))
            assert (model.entropies(ids_tokens) - expected).abs().max().item() < 1e-4


def test_unknown_layouts_fail_with_one_line(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"x")
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "empty").mkdir()
    for target, found in (("odd", "weights.bin"), ("empty", "empty directory"), ("missing", "no such directory")):
        with pytest.raises(CheckpointLayoutError) as info:
            entropy_model_id(str(tmp_path / target))
        message = str(info.value)
        assert "\n" not in message and found in message
        assert "HF Blt" in message and "bytelatent" in message and "entropy_model/params.json" in message


def test_hf_patcher_read_by_byte_ranges_on_s3(bucket, tmp_path):
    """Only the header and model.patcher.* bytes are fetched: a file cut right after the patcher's bytes and a
    missing non-patcher shard both still give the id (a whole-file download would fail on either)."""
    hf, hf_dir = _hf_blt(tmp_path, seed=2)
    expected_id = entropy_model_id(str(hf_dir))
    tensors = load_file(str(hf_dir / "model.safetensors"))
    patcher = {k: v for k, v in tensors.items() if k.startswith("model.patcher.")}
    rest = {k: v for k, v in tensors.items() if not k.startswith("model.patcher.")}
    # Single file with the patcher first, truncated after it.
    header, offset, blobs = {}, 0, []
    for name in sorted(patcher) + sorted(rest):
        data = patcher.get(name, rest.get(name)).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append((name, data))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    patcher_bytes = b"".join(d for n, d in blobs if n in patcher)
    single = f"{bucket}/single"
    write_object(f"{single}/config.json", (hf_dir / "config.json").read_bytes())
    write_object(f"{single}/model.safetensors", len(raw).to_bytes(8, "little") + raw + patcher_bytes)
    assert entropy_model_id(single) == expected_id
    # Sharded: the index points the rest at a shard that does not exist.
    save_file(patcher, str(tmp_path / "patcher.safetensors"))
    sharded = f"{bucket}/sharded"
    write_object(f"{sharded}/config.json", (hf_dir / "config.json").read_bytes())
    write_object(f"{sharded}/model-00001-of-00002.safetensors", (tmp_path / "patcher.safetensors").read_bytes())
    weight_map = {k: "model-00001-of-00002.safetensors" for k in patcher}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in rest})
    write_object(f"{sharded}/model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    assert entropy_model_id(sharded) == expected_id
    model, model_id = load_entropy_model(sharded)
    assert model_id == expected_id


# ----- blt convert --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,k", [(1, 2), (4, 1)])
def test_convert_hf_bytelatent_hf(tmp_path, seed, k):
    hf, hf_dir = _hf_blt(tmp_path, seed=seed, k=k)
    bl_dir, back_dir = tmp_path / "bl", tmp_path / "back"
    assert convert(str(hf_dir), str(bl_dir))["layout"] == "bytelatent"
    assert convert(str(bl_dir), str(back_dir))["layout"] == "hf"

    # The bytelatent files, mapped by HF's rules (restated above), run in HF's own model.
    params = json.loads((bl_dir / "params.json").read_text())
    entropy_params = json.loads((bl_dir / "entropy_model" / "params.json").read_text())
    main = torch.load(bl_dir / "consolidated.pth", weights_only=True)["model"]
    entropy = torch.load(bl_dir / "entropy_model" / "consolidated.pth", weights_only=True)["model"]
    by_rules = BltForCausalLM(hf_rules_config(params["model"], entropy_params)).eval()
    by_rules.load_state_dict(hf_rules_weights(main, entropy), strict=True)
    converted = BltForCausalLM.from_pretrained(back_dir).eval()

    # HF -> bytelatent -> HF gives bit-identical weights.
    original, again = load_file(str(hf_dir / "model.safetensors")), load_file(str(back_dir / "model.safetensors"))
    assert original.keys() == again.keys()
    assert all(torch.equal(original[n], again[n]) for n in original)

    ids = torch.randint(4, 260, (2, 90), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ent = converted.model.patcher(ids, patch_size=4, threshold=1.0)[0]
        lengths = patch_lengths(PatchingParams(threshold=ent.median().item(), max_patch_length=6), ent,
                                include_next=True)
        logits = [m(ids, patch_lengths=lengths, use_cache=False).logits for m in (hf, by_rules, converted)]
        in_forward = [m(ids[:1], use_cache=False).logits for m in (hf, by_rules, converted)]
    for group in (logits, in_forward):
        assert (group[0] - group[1]).abs().max().item() < 1e-4
        assert (group[0] - group[2]).abs().max().item() < 1e-4


def test_convert_ours_attaches_any_patcher(tmp_path):
    """A training run's hf/ export (no patcher) + a bytelatent entropy model -> an HF model that patches itself."""
    from blt_model.formats.hf import load_hf_checkpoint, save_hf_checkpoint

    hf, hf_dir = _hf_blt(tmp_path, seed=3)
    ours, _, _ = load_hf_checkpoint(hf_dir)
    save_hf_checkpoint(ours, tmp_path / "run" / "hf")  # what training writes: no patcher
    random_bytelatent_entropy_model(tmp_path / "em", seed=5)
    out = convert(str(tmp_path / "run"), str(tmp_path / "out"), entropy_model=str(tmp_path / "em"))
    assert out["source_layout"] == "ours"
    exported = BltForCausalLM.from_pretrained(tmp_path / "out").eval()
    patcher, _ = load_entropy_model(str(tmp_path / "em"))
    ids = torch.randint(4, 260, (1, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (exported.model.patcher(ids, patch_size=4, threshold=1.0)[0] - patcher.entropies(ids)).abs().max() < 1e-4
        lengths = patch_lengths(PatchingParams(threshold=1.0), patcher.entropies(ids))
        assert (exported(ids, patch_lengths=lengths, use_cache=False).logits - ours.eval()(ids, lengths).logits
                ).abs().max().item() < 1e-4


@pytest.mark.slow
def test_convert_cli_one_line_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "convert", str(tmp_path / "nothing"), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "convert: error:" in run.stderr


# ----- preprocess end to end, on S3 ----------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_preprocess_with_hf_and_bytelatent_models_on_s3(bucket, tmp_path):
    """``blt preprocess --entropy-model`` an HF Blt dir on s3:// and the same patcher in bytelatent's layout:
    same id in the manifest, and the second run (the converted copy) reprocesses nothing."""
    from pipeline.dataset.manifest import Manifest
    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.driver import run_preprocess

    _, hf_dir = _hf_blt(tmp_path, seed=6)
    _upload(hf_dir, f"{bucket}/models/hf")
    assert convert(f"{bucket}/models/hf", f"{bucket}/models/bl")["layout"] == "bytelatent"
    write_object(f"{bucket}/raw/a.jsonl", jsonl_bytes(make_docs(0, 12)))
    root = f"{bucket}/ds"
    ids, etags = [], []
    for model in (f"{bucket}/models/hf", f"{bucket}/models/bl"):
        cfg = PreprocessConfig(inputs=f"{bucket}/raw/*.jsonl", output=root, entropy_model=model,
                               patching=PatchingParams(threshold=2.0), span=64, use_ray=False)
        run_preprocess(cfg)
        ids.append(Manifest.load(root).model_id)
        fs, path = fsspec.core.url_to_fs(f"{root}/entropies")
        fs.invalidate_cache()
        etags.append({p: fs.info(p)["ETag"] for p in fs.find(path)})
    assert ids[0] == ids[1] == entropy_model_id(f"{bucket}/models/hf")
    assert etags[0] and etags[0] == etags[1]  # the converted copy reprocessed nothing
    assert Manifest.load(root).totals()["docs"] == 12


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_preprocess_cli_with_bytelatent_layout(bucket, tmp_path):
    """The command line a user types, on a bytelatent entropy_model/ layout on S3 (no Ray: --no-ray)."""
    random_bytelatent_entropy_model(f"{bucket}/release/entropy_model", seed=3)
    write_object(f"{bucket}/raw/a.jsonl", jsonl_bytes(make_docs(1, 8)))
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "preprocess", "--inputs", f"{bucket}/raw/*.jsonl",
                          "--output", f"{bucket}/ds", "--entropy-model", f"{bucket}/release", "--no-ray",
                          "--patch-mode", "topk", "--patch-size", "4.5", "--span", "64"],
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["default_patch_set"].startswith("topk-p4.5-")
    from pipeline.dataset.manifest import Manifest

    assert Manifest.load(f"{bucket}/ds").model_id == entropy_model_id(f"{bucket}/release")
