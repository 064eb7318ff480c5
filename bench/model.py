"""Benchmark: our BLT / entropy model vs HF transformers' BltForCausalLM / BltPatcher on the same weights.

Prints a table of bytes/s (training step = forward + backward; with optimizer = plus grad clipping and the
optimizer step; entropy = inference) and the ratio. ``--sparse-hash-grad`` runs ours with sparse hash-table
gradients and SparseAdam for them (training/optim.py); ``--hash-vocab 500002`` is HF's default table size.
Usage: python bench/model.py [--seq-len 1024 --batch 4 --steps 3 --device cpu|cuda --dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blt_model.formats.hf import load_hf_checkpoint  # noqa: E402
from blt_model.patching import PatchingParams, patch_lengths  # noqa: E402
from training.optim import build_optimizers, reduce_and_clip  # noqa: E402


def hf_config(args):
    from transformers import BltConfig

    enc, glob = args.local_dim, args.global_dim
    cfg = BltConfig(
        vocab_size=260, cross_attn_k=2, encoder_hash_byte_group_vocab=args.hash_vocab, local_attention_window_len=512,
        patcher_config=dict(hidden_size=args.entropy_dim, num_hidden_layers=args.entropy_layers,
                            num_attention_heads=args.entropy_dim // 64, intermediate_size=args.entropy_dim * 2,
                            sliding_window=512),
        encoder_config=dict(hidden_size=enc, num_hidden_layers=1, num_attention_heads=enc // 64,
                            hidden_size_global=glob, cross_attn_k=2),
        decoder_config=dict(hidden_size=enc, num_hidden_layers=args.decoder_layers, num_attention_heads=enc // 64,
                            hidden_size_global=glob, cross_attn_k=2, intermediate_size=enc * 3),
        global_config=dict(hidden_size=glob, num_hidden_layers=args.global_layers, num_attention_heads=glob // 64,
                           intermediate_size=glob * 3),
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def timed(fn, steps: int, device: str) -> float:
    fn()  # warm-up (and compile, when enabled)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--local-dim", type=int, default=256)
    parser.add_argument("--global-dim", type=int, default=512)
    parser.add_argument("--global-layers", type=int, default=4)
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--entropy-dim", type=int, default=256)
    parser.add_argument("--entropy-layers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flex"])
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (GPU path)")
    parser.add_argument("--hash-vocab", type=int, default=50002, help="rows per hash n-gram table")
    parser.add_argument("--sparse-hash-grad", action="store_true", help="ours: sparse hash grads + SparseAdam")
    args = parser.parse_args()
    from transformers import BltForCausalLM

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hf = BltForCausalLM(hf_config(args))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours, patcher, _ = load_hf_checkpoint(tmp, attn_implementation=args.attn)
    ours.sparse_hash_grad = args.sparse_hash_grad
    hf, ours, patcher = (m.to(args.device, dtype) for m in (hf, ours, patcher))
    hf_patcher = hf.model.patcher
    tokens = torch.randint(4, 260, (args.batch, args.seq_len), device=args.device)
    labels = torch.randint(4, 260, (args.batch, args.seq_len), device=args.device)
    with torch.no_grad():
        ent = patcher.entropies(tokens)
    lengths = patch_lengths(PatchingParams(threshold=ent.float().quantile(1 - 1 / 4.5).item()), ent)
    with torch.no_grad():
        diff = (hf(tokens, patch_lengths=lengths, use_cache=False).logits.float()
                - ours(tokens, lengths).logits.float()).abs().max().item()
    model_fn = torch.compile(ours) if args.compile else ours

    def hf_step():
        hf.zero_grad(set_to_none=True)
        out = hf(tokens, patch_lengths=lengths, labels=labels, use_cache=False)
        out.loss.backward()

    def our_step():
        ours.zero_grad(set_to_none=True)
        model_fn(tokens, lengths, labels).loss.backward()

    hf.train()
    ours.train()
    rows = []
    nbytes = args.batch * args.seq_len
    t_hf, t_ours = timed(hf_step, args.steps, args.device), timed(our_step, args.steps, args.device)
    rows.append(("BLT train step (fwd+bwd)", nbytes / t_hf, nbytes / t_ours))

    hf_opt = build_optimizers(hf, 1e-4, 0.1, sparse_hash_grad=False)
    our_opts = build_optimizers(ours, 1e-4, 0.1, sparse_hash_grad=args.sparse_hash_grad)

    def hf_full_step():
        hf_step()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt[0].step()

    def our_full_step():
        for opt in our_opts:
            opt.zero_grad(set_to_none=True)
        model_fn(tokens, lengths, labels).loss.backward()
        reduce_and_clip(ours, 1.0, world=1, sparse_hash_grad=args.sparse_hash_grad)
        for opt in our_opts:
            opt.step()

    t_hf, t_ours = timed(hf_full_step, args.steps, args.device), timed(our_full_step, args.steps, args.device)
    rows.append(("train step + AdamW" + (" (ours sparse)" if args.sparse_hash_grad else ""),
                 nbytes / t_hf, nbytes / t_ours))

    def hf_entropy():
        with torch.no_grad():
            hf_patcher(tokens)

    def our_entropy():
        patcher.entropies(tokens)

    t_hf, t_ours = timed(hf_entropy, args.steps, args.device), timed(our_entropy, args.steps, args.device)
    rows.append(("entropy model (inference)", nbytes / t_hf, nbytes / t_ours))
    print(f"device={args.device} dtype={args.dtype} attn={args.attn} batch={args.batch} seq_len={args.seq_len} "
          f"hash_vocab={args.hash_vocab} sparse_hash_grad={args.sparse_hash_grad} "
          f"avg_patch={args.seq_len / (lengths > 0).sum(1).float().mean().item():.2f} max|logit diff|={diff:.2e}")
    print(f"{'workload':34s} {'HF bytes/s':>14s} {'ours bytes/s':>14s} {'speed-up':>9s}")
    for name, hf_rate, our_rate in rows:
        print(f"{name:34s} {hf_rate:14.0f} {our_rate:14.0f} {our_rate / hf_rate:8.2f}x")


if __name__ == "__main__":
    main()
