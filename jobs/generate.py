"""``blt generate MODEL --prompt TEXT``: continue text with a BLT, patching as the model was trained.

MODEL is any model the project knows (a training run's output, its hf/ export, an HF Blt directory, a bytelatent
BLT; any fsspec URL). Text streams to the terminal as it is generated (an incomplete UTF-8 sequence is held until
it completes); ``--json`` prints one object per prompt instead. Decoding is incremental: every byte costs the
same, however long the text grows."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
import time
from dataclasses import dataclass, field

import torch

from blt_model.generate import SamplingConfig, generate

from .common import dataclass_parser, parse_config, run_main

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class GenerateConfig:
    model: str  # model URL (run output, hf/ export, HF Blt directory, bytelatent BLT)
    prompt: list[str] = field(default_factory=list)  # a prompt
    prompt_file: list[str] = field(default_factory=list)  # a file whose bytes are a prompt
    entropy_model: str | None = None  # patcher to use instead of the one that comes with the model
    max_new_bytes: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    greedy: bool = False  # always the most likely byte (ignores temperature, top-k, top-p)
    json: bool = False  # one JSON object per prompt instead of streamed text
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    dtype: str = "fp32"  # fp32 or bf16
    threads: int | None = 1  # torch CPU threads (none: torch's default); byte-at-a-time decoding is latency-bound

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_bytes, self.temperature, self.top_k, self.top_p, self.seed, self.greedy)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


CONFIG = GenerateConfig  # the schema: flags, help and YAML keys


def build_parser() -> argparse.ArgumentParser:
    return dataclass_parser(GenerateConfig, "blt generate", __doc__, positional=("model",))


def _prompts(cfg: GenerateConfig, parser: argparse.ArgumentParser) -> list[bytes]:
    prompts = [p.encode() for p in cfg.prompt]
    for path in cfg.prompt_file:
        try:
            with open(path, "rb") as handle:
                prompts.append(handle.read())
        except OSError as exc:
            parser.error(f"--prompt-file {path}: {exc.strerror}")
    if not prompts:
        parser.error("give at least one --prompt or --prompt-file")
    if any(not p for p in prompts):
        parser.error("a prompt is empty (BLT needs at least one byte to continue)")
    return prompts


def sample_line(model_url: str, prompt: str = "The ", max_new_bytes: int = 60, seed: int = 0) -> str:
    """One short line of text from a model (e.g. at the end of ``blt demo``), whitespace folded."""
    from training.model_source import load_model

    loaded = load_model(model_url)
    result = generate(loaded.model, loaded.patcher, [prompt.encode()], loaded.patching, max_new_bytes,
                      temperature=0.8, top_k=40, seed=seed)[0]
    return repr(" ".join(result.text.decode(errors="replace").split()))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg, _ = parse_config(parser, GenerateConfig, argv)
    prompts = _prompts(cfg, parser)
    if cfg.dtype not in DTYPES:
        parser.error(f"--dtype must be one of {sorted(DTYPES)}")
    try:
        sampling = cfg.sampling()
        device = cfg.torch_device()
    except (ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")

    if cfg.threads is not None:
        if cfg.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(cfg.threads)

    def body() -> int:
        from training.model_source import load_model

        loaded = load_model(cfg.model, cfg.entropy_model, device=device, dtype=DTYPES[cfg.dtype])
        run = lambda batch, on_bytes=None: generate(  # noqa: E731
            loaded.model, loaded.patcher, batch, loaded.patching, sampling.max_new_bytes, sampling.temperature,
            sampling.top_k, sampling.top_p, sampling.seed, sampling.greedy, on_bytes=on_bytes)
        if cfg.json:
            for result in run(prompts):
                print(json.dumps({
                    "prompt": result.prompt.decode(errors="replace"),
                    "text": result.new_bytes.decode(errors="replace"), "bytes": result.new_bytes.hex(),
                    "new_bytes": len(result.new_bytes), "patches": result.patches,
                    "seconds": round(result.seconds, 4), "bytes_per_s": round(result.bytes_per_s, 2)}))
            return 0
        for prompt in prompts:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            sys.stdout.write(prompt.decode(errors="replace"))
            sys.stdout.flush()
            started = time.perf_counter()

            def stream(_row: int, data: bytes, decoder=decoder) -> None:
                sys.stdout.write(decoder.decode(data))
                sys.stdout.flush()

            result = run([prompt], stream)[0]
            sys.stdout.write(decoder.decode(b"", final=True) + "\n")
            print(f"[{len(result.new_bytes)} bytes, {result.patches} patches, "
                  f"{len(result.new_bytes) / (time.perf_counter() - started):.1f} bytes/s, patching "
                  f"{loaded.patching.mode}]", file=sys.stderr)
        return 0

    return run_main("generate", body)


if __name__ == "__main__":
    raise SystemExit(main())
