"""Benchmark: entropy scoring on real text against the hardware limit and against HF ``BltPatcher``.

The released entropy model's shape (HF ``BltPatcherConfig`` defaults: hidden 768, 14 layers, 12 heads, sliding
window 512, vocab 260) with random weights, on real text: the Python standard library's sources (the base
interpreter's lib dir) plus prose (/usr/share/doc, man pages), cut into documents of at most 8192 bytes.
Prints one table: ours (every document packed end to end, exact streaming with a KV cache), HF ``BltPatcher``
on the same weights (each document alone, as HF runs it; on a prefix of the corpus, HF is slow), the measured
matmul peak (torch.mm on large square matrices, same threads/dtype/device), FLOPs per byte, our share of the
peak, the speed-up over HF and the max |diff| between our and HF's entropies.

By default it runs exactly what ``blt preprocess`` runs in each worker (``PreprocessConfig`` defaults: span,
documents gathered per scoring call, torch threads = CPUs per worker, fp32 on CPU / bf16 with lanes on CUDA) and
prints those settings; a flag that overrides one is printed as such. ``--spans 2048,4096,16384`` measures each span
with the other production settings (the default span is chosen from this table).

Usage: python bench/entropy.py [--quick] [--kb 256] [--hf-kb 24] [--threads 2] [--span 4096]
       python bench/entropy.py --no-hf --spans 2048,4096,8192,16384   # share of the peak per span
       python bench/entropy.py --device cuda                          # GPU: bf16, lanes batched per call
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blt_model.config import EntropyModelConfig  # noqa: E402
from blt_model.entropy_model import EntropyModel  # noqa: E402
from blt_model.entropy_stream import stream_entropies  # noqa: E402
from blt_model.formats.hf import load_hf_weights_into  # noqa: E402
from blt_model.tokens import bytes_to_tokens  # noqa: E402
from pipeline.preprocess.config import PreprocessConfig  # noqa: E402
from training.flops import entropy_flops_per_byte, matmul_peak  # noqa: E402

PRODUCTION = PreprocessConfig(inputs="", output="", entropy_model="")  # what `blt preprocess` runs by default

MAX_DOC = 8192  # HF BltPatcher's max_position_embeddings: every document fits one HF call


def stdlib_dir() -> Path:
    """The base interpreter's lib dir (not the venv's), e.g. /usr/lib/python3.11."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["stdlib"]
    return Path(base)


def prose_files() -> list[Path]:
    roots = [Path("/usr/share/doc"), Path("/usr/share/man/man1"), Path("/usr/share/man/man5")]
    found = []
    for root in roots:
        if root.is_dir():
            found += sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return found


def read_text(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return b""
    if b"\0" in data[:4096]:
        return b""  # binary
    return data


def corpus(total_bytes: int) -> list[bytes]:
    """Half Python sources, half prose, interleaved; files cut into documents of at most MAX_DOC bytes."""
    code = sorted(stdlib_dir().glob("*.py"))
    prose = prose_files()
    docs: list[bytes] = []
    sizes = {"code": 0, "prose": 0}
    streams = {"code": iter(code), "prose": iter(prose)}
    while sum(sizes.values()) < total_bytes and streams:
        for kind in list(streams):
            path = next(streams[kind], None)
            if path is None:
                del streams[kind]
                continue
            data = read_text(path)
            if not data or (sizes[kind] >= total_bytes // 2 and streams.keys() - {kind}):
                continue
            data = data[: total_bytes // 8]  # many files, not one big one
            docs += [data[i : i + MAX_DOC] for i in range(0, len(data), MAX_DOC)]
            sizes[kind] += len(data)
    return docs


def random_patcher(device: torch.device):
    """HF BltPatcher with BltPatcherConfig defaults and weights at unit activation scale (so entropies vary)."""
    from transformers.models.blt.modeling_blt import BltPatcher, BltPatcherConfig

    cfg = BltPatcherConfig()
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = BltPatcher(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
            elif p.ndim == 2:
                p.normal_(0.0, 1.0)
    ours_cfg = EntropyModelConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, num_hidden_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_parameters["rope_theta"], sliding_window=cfg.sliding_window, rms_norm_eps=cfg.rms_norm_eps,
    )
    ours = EntropyModel(ours_cfg).eval()
    load_hf_weights_into(ours, {f"model.patcher.{k}": v for k, v in hf.state_dict().items()}, "model.patcher.")
    return hf.to(device), ours.to(device), ours_cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpus (48 KB ours, 8 KB HF)")
    parser.add_argument("--kb", type=int, default=256, help="corpus size scored by ours")
    parser.add_argument("--hf-kb", type=int, default=24, help="prefix of the corpus also scored by HF")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of ours (best is reported)")
    parser.add_argument("--span", type=int, default=None, help=f"tokens per model call (per lane); default: "
                        f"production's {PRODUCTION.span}")
    parser.add_argument("--spans", default=None, help="comma-separated spans to measure one after another")
    parser.add_argument("--lanes", type=int, default=None, help="lanes batched per call (default: 1 CPU, auto GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads; default: production's, one per CPU of a worker ({_threads()})")
    parser.add_argument("--device", default=None, help="default: production's (cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: production's (bf16 on "
                        "cuda, fp32 on cpu)")
    parser.add_argument("--peak-n", type=int, default=None, help="matrix size for the peak (2048 CPU, 8192 GPU)")
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.kb, args.hf_kb, args.repeats = 48, 8, 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else None
    threads = args.threads or _threads()
    torch.set_num_threads(threads)  # as each preprocess actor does
    mm_dtype = dtype or torch.float32
    peak_n = args.peak_n or (8192 if device.type == "cuda" else 2048)
    spans = [int(x) for x in args.spans.split(",")] if args.spans else [args.span or PRODUCTION.span]

    docs = corpus(args.kb * 1024)
    data = b"".join(docs)
    hf, ours, cfg = random_patcher(device)
    if dtype is not None:
        hf = hf.to(dtype)
    dense, attention = entropy_flops_per_byte(cfg)
    fpb = dense + attention

    peaks = [matmul_peak(device, mm_dtype, peak_n)]
    best = dict.fromkeys(spans, float("inf"))
    entropies = {}
    for span in spans:
        score(ours, docs[:1], span, device, dtype, args.lanes)  # warm-up
    for _ in range(args.repeats):  # spans interleaved, so a change in the machine's load hits each alike
        for span in spans:
            sync(device)
            start = time.perf_counter()
            entropies[span] = score(ours, docs, span, device, dtype, args.lanes)
            sync(device)
            best[span] = min(best[span], time.perf_counter() - start)
            peaks.append(matmul_peak(device, mm_dtype, peak_n))
    results = {span: (len(data) / best[span], entropies[span]) for span in spans}
    peak = max(peaks)
    ours_bps, ent = results[spans[0]]

    hf_bps, max_diff, hf_bytes = float("nan"), float("nan"), 0
    if not args.no_hf:
        hf_docs, hf_ent = [], []
        for doc in docs:
            if hf_bytes >= args.hf_kb * 1024:
                break
            hf_docs.append(doc)
            hf_bytes += len(doc)
        with torch.no_grad():
            hf(bytes_to_tokens(hf_docs[0][:512])[None].to(device))  # warm-up
            sync(device)
            start = time.perf_counter()
            for doc in hf_docs:
                hf_ent.append(hf(bytes_to_tokens(doc)[None].to(device))[0][0].float().cpu())
            sync(device)
            hf_bps = hf_bytes / (time.perf_counter() - start)
        max_diff = (torch.cat(hf_ent) - ent[:hf_bytes]).abs().max().item()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    def mark(flag, value) -> str:
        return f"{value} ({'flag' if flag is not None else 'production default'})"

    print(f"corpus: {len(data):,} bytes in {len(docs)} documents (stdlib sources + prose, <= {MAX_DOC} B each); "
          f"HF scored the first {hf_bytes:,} bytes; load average {load:.2f}")
    print(f"settings: device {mark(args.device, device)}, dtype {mark(args.dtype, dtype_name)}, "
          f"threads {mark(args.threads, threads)}, span {mark(args.span or args.spans, ','.join(map(str, spans)))}, "
          f"documents per scoring call up to {PRODUCTION.batch_bytes:,} B (production), "
          f"lanes {mark(args.lanes, args.lanes or 'auto')}")
    print(f"entropies: mean {ent.mean():.3f} std {ent.std():.3f} nats")
    rows = [
        (f"ours, span {spans[0]} (bytes/s)", f"{ours_bps:,.0f}"),
        ("HF BltPatcher, each document alone (bytes/s)", f"{hf_bps:,.0f}"),
        ("speed-up vs HF", f"{ours_bps / hf_bps:.2f}x"),
        (f"measured {dtype_name} matmul peak (GFLOP/s, torch.mm {peak_n}^2)", f"{peak / 1e9:,.1f}"),
        ("FLOPs per byte (matmuls + attention over the window)", f"{dense / 1e6:.1f} + {attention / 1e6:.1f} M"),
        ("ours (GFLOP/s)", f"{ours_bps * fpb / 1e9:,.1f}"),
        ("ours, share of the matmul peak (goal >= 80%)", f"{ours_bps * fpb / peak:.1%}"),
        ("limit at 100% of the peak (bytes/s)", f"{peak / fpb:,.0f}"),
        ("max |ours - HF| (nats)", f"{max_diff:.2e}"),
    ]
    rows += [(f"span {span}: bytes/s, share of the peak", f"{bps:,.0f}, {bps * fpb / peak:.1%}")
             for span, (bps, _) in results.items() if len(results) > 1]
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric'.ljust(width)} | value |\n| {'-' * width} | ----- |")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def _threads() -> int:
    """Torch threads of one preprocess actor (``preprocess._run_on_actors``): its whole CPUs."""
    return max(1, int(PRODUCTION.cpus_per_worker))


def score(model, docs: list[bytes], span: int, device, dtype, lanes) -> torch.Tensor:
    """As ``ShardProcessor``: documents gathered up to ``batch_bytes``, one ``stream_entropies`` call per batch."""
    out, batch, nbytes = [], [], 0

    def flush() -> None:
        tokens = bytes_to_tokens(b"".join(batch))
        doc_ids = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(d) for d in batch]))
        out.append(stream_entropies(model, tokens, doc_ids, span, PRODUCTION.context, device, dtype, lanes))

    for doc in docs:
        batch.append(doc)
        nbytes += len(doc)
        if nbytes >= PRODUCTION.batch_bytes:
            flush()
            batch, nbytes = [], 0
    if batch:
        flush()
    return torch.cat(out)


if __name__ == "__main__":
    main()
