"""Benchmark: generation speed, ours (incremental, ``blt_model/generate.py``) vs HF ``BltForCausalLM.generate``
(``use_cache=False``: HF's cached generate fails for BLT, checked and reported below) vs the full recompute (our
forward over the whole prefix, patched with the rule, at every byte), on the same weights, greedy.

Model: the shape ``blt demo`` trains (``--preset tiny``; ``--preset small`` is the one-GPU size) with random
weights; the patcher is the demo's entropy-model shape with a sharpened random head, and the entropy threshold is
set so the prompt text averages 4.5 bytes per patch (what the demo calibrates to). Prompts: real text (the start of
a Python standard-library module). Prints bytes/s for 256 and 2048 new bytes, and ms per byte around new byte 100
and new byte 2000 (median of 21 steps): flat means O(1) per byte.

``--quick``: HF and the full recompute run 256 new bytes only; their 2048-byte rows are then extrapolated from a
linear fit of their measured per-byte times (cost grows with the prefix) and are marked "extrapolated".

Usage: python bench/generate.py [--quick] [--preset tiny|small] [--threads N] [--device cpu|cuda --dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blt_model.blt import ByteLatentTransformer  # noqa: E402
from blt_model.entropy_model import EntropyModel  # noqa: E402
from blt_model.formats.hf import save_hf_checkpoint  # noqa: E402
from blt_model.generate import generate  # noqa: E402
from blt_model.patching import PatchingParams, lengths_from_start_mask, patch_start_mask  # noqa: E402
from blt_model.presets import blt_preset, entropy_preset  # noqa: E402
from blt_model.tokens import BYTE_OFFSET  # noqa: E402
from training.export import hf_patching_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prompt_text(size: int) -> bytes:
    """The first ``size`` bytes of a real Python stdlib module (after its docstring opening)."""
    lib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["stdlib"])
    return (lib / "textwrap.py").read_bytes()[:size]


@dataclass
class Row:
    name: str
    new_bytes: int
    seconds: float
    step_seconds: list[float]
    cpu_seconds: float = 0.0  # this process's CPU time: the work done, whatever else shares the cores
    step_cpu: list[float] = field(default_factory=list)  # CPU time of each step (one torch thread: exact)
    extrapolated: bool = False
    output: bytes = b""

    def ms_at(self, index: int, cpu: bool = False) -> float | None:
        steps = self.step_cpu if cpu else self.step_seconds
        if len(steps) <= index + 10:
            return None
        return 1000 * statistics.median(steps[index - 10: index + 11])


def build(preset: str, device, dtype, prompt: bytes):
    torch.manual_seed(0)
    cfg = blt_preset(preset)
    model = ByteLatentTransformer(cfg).eval()
    patcher = EntropyModel(entropy_preset("tiny")).eval()
    with torch.no_grad():
        patcher.lm_head.weight.mul_(6.0)  # varied entropies, like a trained patcher
        entropies = patcher.entropies(torch.tensor(list(prompt))[None] + BYTE_OFFSET)[0, 1:]
    threshold = float(torch.quantile(entropies, 1 - 1 / 4.5))
    cfg.patcher_config = patcher.cfg
    return model.to(device, dtype), patcher.to(device, dtype), PatchingParams("entropy", threshold)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_ours(model, patcher, params, prompt, n, device) -> Row:
    generate(model, patcher, [prompt], params, max_new_bytes=8, greedy=True)  # warm-up
    sync(device)
    started, cpu = time.perf_counter(), time.process_time()
    result = generate(model, patcher, [prompt], params, max_new_bytes=n, greedy=True)[0]
    sync(device)
    return Row("ours (incremental)", n, time.perf_counter() - started, result.byte_seconds,
               time.process_time() - cpu, result.byte_cpu_seconds, output=result.new_bytes)


@torch.no_grad()
def run_recompute(model, patcher, params, prompt, n, device) -> Row:
    """Full forward over the whole prefix at every byte (the semantics ``generate`` must equal)."""
    data = list(prompt)
    steps = []
    started, cpu = time.perf_counter(), time.process_time()
    step_cpu = []
    for _ in range(n):
        began, began_cpu = time.perf_counter(), time.thread_time()
        tokens = torch.tensor(data, device=device)[None] + BYTE_OFFSET
        entropies = torch.cat((patcher.entropies(tokens), torch.zeros(1, 1, device=device)), dim=1)
        starts, _ = patch_start_mask(params, entropies)
        lengths = lengths_from_start_mask(starts)
        lengths[0, -1] -= 1
        logits = model(tokens, lengths).logits[0, -1].float()
        logits[:BYTE_OFFSET] = float("-inf")
        data.append(int(logits.argmax()) - BYTE_OFFSET)
        steps.append(time.perf_counter() - began)
        step_cpu.append(time.thread_time() - began_cpu)
    return Row("full recompute (ours)", n, time.perf_counter() - started, steps, time.process_time() - cpu, step_cpu,
               output=bytes(data[len(prompt):]))


def hf_model(model, patcher, params, device, dtype):
    from transformers import BltForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(model.float().cpu(), tmp, patcher.float().cpu(), hf_patching_config(params, True))
        hf = BltForCausalLM.from_pretrained(tmp).eval()
    model.to(device, dtype), patcher.to(device, dtype)
    return hf.to(device, dtype)


def hf_cached_generate_error(hf, prompt, device) -> str:
    ids = torch.tensor(list(prompt), device=device)[None] + BYTE_OFFSET
    try:
        hf.generate(ids, max_new_tokens=2, do_sample=False)
    except Exception as exc:  # noqa: BLE001 - reported as-is
        return f"{type(exc).__name__}: {exc}"
    return "works"


def run_hf(hf, prompt, n, device) -> Row:
    from transformers import StoppingCriteria

    class Clock(StoppingCriteria):
        def __init__(self) -> None:
            self.times = [time.perf_counter()]
            self.cpu = [time.thread_time()]

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            self.cpu.append(time.thread_time())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    ids = torch.tensor(list(prompt), device=device)[None] + BYTE_OFFSET
    clock = Clock()
    started, cpu = time.perf_counter(), time.process_time()
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, use_cache=False, stopping_criteria=[clock],
                      suppress_tokens=list(range(BYTE_OFFSET)))
    sync(device)
    seconds = time.perf_counter() - started
    steps = [b - a for a, b in zip(clock.times[:-1], clock.times[1:])]
    step_cpu = [b - a for a, b in zip(clock.cpu[:-1], clock.cpu[1:])]
    return Row("HF generate(use_cache=False)", n, seconds, steps, time.process_time() - cpu, step_cpu,
               output=bytes((out[0, ids.shape[1]:] - BYTE_OFFSET).tolist()))


def extrapolate(row: Row, n: int) -> Row:
    """Per-byte time as a + b * index (least squares on the measured steps), summed over n bytes."""
    xs = list(range(len(row.step_seconds)))
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(row.step_seconds)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, row.step_seconds)) / sum((x - mean_x) ** 2 for x in xs)
    base = mean_y - slope * mean_x
    steps = [base + slope * i for i in range(n)]
    cpu = [x * row.cpu_seconds / row.seconds for x in steps]
    return Row(row.name, n, sum(steps), steps, sum(cpu), cpu, extrapolated=True)


def prefill_line(model, patcher, params, size: int) -> str:
    """CPU seconds to read a ``size``-byte prompt (and predict one byte): in parallel chunks vs byte by byte."""
    prompt = prompt_text(size)
    seconds, outputs = {}, {}
    for chunk in (256, 1):
        started = time.process_time()
        result = generate(model, patcher, [prompt], params, max_new_bytes=1, greedy=True, prefill_chunk=chunk)[0]
        seconds[chunk], outputs[chunk] = time.process_time() - started, result.new_bytes
    return (f"prompt of {len(prompt)} bytes, read in chunks of 256: {seconds[256]:.2f} CPU s; byte by byte: "
            f"{seconds[1]:.2f} CPU s ({seconds[1] / seconds[256]:.1f}x); same next byte: "
            f"{'yes' if outputs[1] == outputs[256] else 'NO'}")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="HF and full recompute: 256 bytes, 2048 extrapolated")
    parser.add_argument("--preset", default="tiny", help="BLT size (tiny = what blt demo trains; small)")
    parser.add_argument("--prompt-bytes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--prefill-bytes", type=int, default=4000, help="long prompt for the prefill line")
    parser.add_argument("--prefill-only", action="store_true", help="print only the prefill line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    prompt = prompt_text(args.prompt_bytes)
    model, patcher, params = build(args.preset, device, dtype, prompt)
    if args.prefill_only:
        print(prefill_line(model, patcher, params, args.prefill_bytes))
        return
    sizes = (256, 2048)
    rows: list[Row] = [run_ours(model, patcher, params, prompt, n, device) for n in sizes]
    slow_sizes = (256,) if args.quick else sizes
    for n in slow_sizes:
        rows.append(run_recompute(model, patcher, params, prompt, n, device))
    cached = None
    if not args.no_hf:
        hf = hf_model(model, patcher, params, device, dtype)
        cached = hf_cached_generate_error(hf, prompt, device)
        for n in slow_sizes:
            rows.append(run_hf(hf, prompt, n, device))
    if args.quick:
        rows += [extrapolate(r, 2048) for r in rows if r.new_bytes == 256 and not r.name.startswith("ours")]
    patches = generate(model, patcher, [prompt], params, max_new_bytes=256, greedy=True)[0].patch_lengths
    print(f"model: preset {args.preset}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"entropy threshold {params.threshold:.3f} ({len(prompt) + 256} bytes in {len(patches)} patches); "
          f"prompt {len(prompt)} bytes of textwrap.py; device {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads; greedy")
    if cached is not None:
        print(f"HF generate with its cache (use_cache=True): {cached}")
    ours = {r.new_bytes: r for r in rows if r.name.startswith("ours")}
    print(prefill_line(model, patcher, params, args.prefill_bytes))
    print()
    print("| implementation | new bytes | wall s | CPU s | bytes/s (wall) | bytes/s (CPU) | ms/byte @100 (wall / CPU) "
          "| ms/byte @2000 (wall / CPU) | ours x faster (wall / CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r.new_bytes, not r.name.startswith("ours"), r.name)):
        base = ours[r.new_bytes]
        speedup = "-" if r is base else f"{r.seconds / base.seconds:.1f}x / {r.cpu_seconds / base.cpu_seconds:.1f}x"
        name = r.name + (" (extrapolated)" if r.extrapolated else "")
        print(f"| {name} | {r.new_bytes} | {r.seconds:.2f} | {r.cpu_seconds:.2f} | {r.new_bytes / r.seconds:.1f} "
              f"| {r.new_bytes / r.cpu_seconds:.1f} | {fmt(r.ms_at(100), '.2f')} / {fmt(r.ms_at(100, True), '.2f')} "
              f"| {fmt(r.ms_at(2000), '.2f')} / {fmt(r.ms_at(2000, True), '.2f')} | {speedup} |")
    flat = ours[2048].ms_at(2000) / ours[2048].ms_at(100)
    flat_cpu = ours[2048].ms_at(2000, True) / ours[2048].ms_at(100, True)
    print(f"\nours: ms/byte at byte 2000 / at byte 100 = {flat:.2f} wall, {flat_cpu:.2f} CPU (goal <= 1.5)")
    for r in rows:
        if r.output and not r.name.startswith("ours"):
            same = r.output == ours[r.new_bytes].output
            print(f"{r.name}, {r.new_bytes} bytes: same bytes as ours: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
