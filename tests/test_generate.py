"""Incremental generation equals a full recompute over the whole prefix at every step (written here, from the
model's forward and the patching rules), for every incremental patching mode, prompts from 1 byte to several
local windows long, and batches of prompts of different lengths; and HF's BltForCausalLM greedy output."""

from __future__ import annotations

import json

import pytest
import torch

from blt_model.blt import ByteLatentTransformer
from blt_model.config import BltConfig
from blt_model.entropy_model import EntropyModel
from blt_model.generate import generate
from blt_model.patching import PatchingParams, lengths_from_start_mask, patch_start_mask
from blt_model.tokens import BYTE_OFFSET

WINDOW = 8  # local attention window: prompts below run over several windows
TEXT = b"def f(x):\n    return x * 2  # double it, then again: 42 times over and over."


def tiny_config(**overrides) -> BltConfig:
    base = dict(
        encoder_hash_byte_group_vocab=97, local_attention_window_len=WINDOW, cross_attn_k=2,
        patcher_config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            intermediate_size=48, sliding_window=6),
        encoder_config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                            intermediate_size=64),
        decoder_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                            cross_attn_all_layers=True),
        global_config=dict(hidden_size=48, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96),
    )
    base.update(overrides)
    return BltConfig(**base)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids contention for the CPU cores (30x on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = ByteLatentTransformer(cfg).eval()
    patcher = EntropyModel(cfg.patcher_config).eval()
    with torch.no_grad():
        patcher.lm_head.weight.mul_(6.0)  # varied entropies, like a trained patcher
        model.lm_head.weight.mul_(3.0)
    entropies = patcher.entropies(torch.tensor(list(TEXT))[None] + BYTE_OFFSET)[0]
    return model, patcher, float(entropies.median())


@torch.no_grad()
def reference_logits(model, patcher, params: PatchingParams, data: list[int]) -> torch.Tensor:
    """Full recompute: patch the whole prefix with the rule, run the whole model, take the last position.

    Whether the next byte opens a patch is decided as it would be inside a longer text: the prefix is extended
    by one dummy byte, patched, and the dummy is dropped again (a zero-length last patch when it opens one)."""
    tokens = torch.tensor(data)[None] + BYTE_OFFSET
    ext = torch.tensor(data + [0])[None]
    entropies = None
    if params.needs_entropies:
        entropies = torch.cat((patcher.entropies(tokens), torch.zeros(1, 1)), dim=1)
    starts, _ = patch_start_mask(params, entropies, None if params.needs_entropies else ext,
                                 length=ext.shape[1])
    lengths = lengths_from_start_mask(starts)
    lengths[0, -1] -= 1
    return model(tokens, lengths).logits[0, -1]


def reference_greedy(model, patcher, params, prompt: bytes, steps: int) -> tuple[bytes, torch.Tensor]:
    data, logits = list(prompt), []
    for _ in range(steps):
        step = reference_logits(model, patcher, params, data)
        logits.append(step)
        masked = step.clone()
        masked[:BYTE_OFFSET] = float("-inf")
        data.append(int(masked.argmax()) - BYTE_OFFSET)
    return bytes(data[len(prompt):]), torch.stack(logits)


MODES = {
    "entropy": lambda t: PatchingParams("entropy", t),
    "entropy-max3": lambda t: PatchingParams("entropy", t, max_patch_length=3),
    "static": lambda t: PatchingParams("static", None, patch_size=3),
    "space": lambda t: PatchingParams("space", None),
    "monotonic": lambda t: PatchingParams("monotonic", 0.3),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_batch_equals_full_recompute(models, mode):
    model, patcher, threshold = models
    params = MODES[mode](threshold)
    prompts = [TEXT[:1], TEXT[:5], TEXT[:19], TEXT[:30]]  # 1 byte .. several windows of 8
    steps = 12
    expected = [reference_greedy(model, patcher, params, prompt, steps) for prompt in prompts]
    results = generate(model, patcher, prompts, params, max_new_bytes=steps, greedy=True, return_logits=True)
    # The long prompts again, their shared bytes fed in parallel chunks of 5 (patches cross chunk boundaries).
    chunked = generate(model, patcher, prompts[2:], params, max_new_bytes=steps, greedy=True, return_logits=True,
                       prefill_chunk=5)
    sizes = []
    for prompt, result, (new_bytes, logits) in [*zip(prompts, results, expected), *zip(prompts[2:], chunked,
                                                                                      expected[2:])]:
        assert result.new_bytes == new_bytes
        torch.testing.assert_close(result.logits, logits, atol=1e-4, rtol=0)
        assert sum(result.patch_lengths) == len(prompt) + steps
        sizes.extend(result.patch_lengths)
    assert [r.patch_lengths for r in chunked] == [r.patch_lengths for r in results[2:]]
    assert max(sizes) > 1 and min(sizes) >= 1  # real patches, not one byte each


def test_sampling_is_seeded_and_streams(models):
    model, patcher, threshold = models
    params = PatchingParams("entropy", threshold)
    seen: dict[int, bytes] = {0: b"", 1: b""}

    def on_bytes(i, data):
        seen[i] += data

    kwargs = dict(max_new_bytes=10, temperature=0.8, top_k=50, top_p=0.9, seed=3)
    first = generate(model, patcher, [TEXT[:4], TEXT[:9]], params, on_bytes=on_bytes, **kwargs)
    again = generate(model, patcher, [TEXT[:4], TEXT[:9]], params, **kwargs)
    assert [r.new_bytes for r in first] == [r.new_bytes for r in again]
    assert [seen[0], seen[1]] == [r.new_bytes for r in first] and all(len(r.new_bytes) == 10 for r in first)
    with pytest.raises(ValueError, match="looks ahead"):
        generate(model, patcher, [b"x"], PatchingParams("topk", None), max_new_bytes=2)
    with pytest.raises(ValueError, match="at least one byte"):
        generate(model, patcher, [b""], params, max_new_bytes=2)


def test_bf16_runs(models):
    model, patcher, threshold = models
    model16 = ByteLatentTransformer(model.cfg).eval()
    model16.load_state_dict(model.state_dict())
    patcher16 = EntropyModel(patcher.cfg).eval()
    patcher16.load_state_dict(patcher.state_dict())
    out = generate(model16.to(torch.bfloat16), patcher16.to(torch.bfloat16), [TEXT[:6], TEXT[:20]],
                   PatchingParams("entropy", threshold), max_new_bytes=8, greedy=True)
    assert [len(r.new_bytes) for r in out] == [8, 8]


def test_matches_hf_greedy(models, tmp_path):
    """HF BltForCausalLM (patching in its forward, use_cache=False) continues a prompt with the same bytes."""
    pytest.importorskip("transformers")
    from transformers import BltForCausalLM

    from blt_model.formats.hf import save_hf_checkpoint
    from training.export import hf_patching_config

    model, patcher, threshold = models
    params = PatchingParams("entropy", threshold)
    save_hf_checkpoint(model, tmp_path, patcher, hf_patching_config(params, True))
    hf = BltForCausalLM.from_pretrained(tmp_path).eval()
    prompt = TEXT[:13]
    steps = 16
    ids = torch.tensor(list(prompt))[None] + BYTE_OFFSET
    out = hf.generate(ids, max_new_tokens=steps, do_sample=False, use_cache=False,
                      suppress_tokens=list(range(BYTE_OFFSET)))
    theirs = bytes((out[0, ids.shape[1]:] - BYTE_OFFSET).tolist())
    ours = generate(model, patcher, [prompt], params, max_new_bytes=steps, greedy=True)[0].new_bytes
    assert ours == theirs


def test_cli_streams_text_and_json(models, tmp_path, capsys):
    """`blt generate` on an HF export that carries its patcher and rule: streamed text and --json agree with the
    API; bad arguments are one line and exit 2."""
    from blt_model.formats.hf import save_hf_checkpoint
    from jobs.cli import main
    from training.export import hf_patching_config

    model, patcher, threshold = models
    params = PatchingParams("entropy", threshold, max_patch_length=5)
    save_hf_checkpoint(model, tmp_path / "m", patcher, hf_patching_config(params, True))
    expected = [r.new_bytes for r in generate(model, patcher, [b"ab", "é c".encode()], params, max_new_bytes=9,
                                              greedy=True)]
    url = str(tmp_path / "m")
    assert main(["generate", url, "--prompt", "ab", "--prompt", "é c", "--max-new-bytes", "9", "--greedy",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [bytes.fromhex(r["bytes"]) for r in rows] == expected
    assert all(r["new_bytes"] == 9 and r["patches"] >= 2 and r["bytes_per_s"] > 0 for r in rows)
    (tmp_path / "p.txt").write_bytes(b"ab")
    assert main(["generate", url, "--prompt-file", str(tmp_path / "p.txt"), "--max-new-bytes", "9",
                 "--greedy"]) == 0
    assert capsys.readouterr().out == "ab" + expected[0].decode(errors="replace") + "\n"
    for bad in (["--prompt", "x", "--temperature", "0"], ["--prompt", "x", "--top-p", "2"], [],
                ["--prompt", "x", "--max-new-bytes", "many"], ["--prompt", "x", "--dtype", "fp8"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", url, *bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and "error" in err
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 1
    assert "no BLT model found" in capsys.readouterr().err


def test_other_shapes_equal_full_recompute():
    """One cross-attention slot, decoder cross-attention in the first layer only, encoder cross-attention in every
    layer, GQA in the global model, a 4-byte window and 2 hash functions."""
    torch.manual_seed(1)
    cfg = tiny_config(
        cross_attn_k=1, local_attention_window_len=4, encoder_hash_byte_group_nb_functions=2,
        encoder_hash_byte_group_size=[2, 3, 5],
        encoder_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                            cross_attn_all_layers=True),
        decoder_config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=3,
                            intermediate_size=64, cross_attn_all_layers=False),
        global_config=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                           intermediate_size=96),
    )
    model = ByteLatentTransformer(cfg).eval()
    patcher = EntropyModel(cfg.patcher_config).eval()
    with torch.no_grad():
        patcher.lm_head.weight.mul_(6.0)
        model.lm_head.weight.mul_(3.0)
    params = PatchingParams("entropy", 2.5, max_patch_length=4)
    prompts = [TEXT[:2], TEXT[:11]]
    results = generate(model, patcher, prompts, params, max_new_bytes=10, greedy=True, return_logits=True)
    for prompt, result in zip(prompts, results):
        expected, logits = reference_greedy(model, patcher, params, prompt, 10)
        assert result.new_bytes == expected
        torch.testing.assert_close(result.logits, logits, atol=1e-4, rtol=0)
