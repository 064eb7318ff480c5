"""Benchmark: the entropy stage (ours: packed spans, block-sparse attention, Ray) vs a naive per-document loop, and re-patching.

Prints one table: bytes/s of the entropy stage with 1 and 2 Ray workers (1 CPU thread each), the naive loop
(one document at a time, its chunks batched, as in the reference preprocess script), and re-patching from
stored entropies (no model). Usage: python bench/preprocess.py [--mbytes 1 --dim 128 --layers 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blt_model import EntropyModel, EntropyModelConfig  # noqa: E402
from blt_model.patching import PatchingParams  # noqa: E402
from blt_model.tokens import bytes_to_tokens  # noqa: E402
from pipeline.dataset.layout import entropy_shard_path  # noqa: E402
from pipeline.dataset.manifest import Manifest, ShardRecord  # noqa: E402
from pipeline.dataset.model_store import save_entropy_model  # noqa: E402
from pipeline.dataset.shards import ENTROPY_SCHEMA, ShardWriter, entropy_batch  # noqa: E402
from pipeline.io import ray_runtime  # noqa: E402
from pipeline.io.storage import join  # noqa: E402
from pipeline.preprocess.config import PreprocessConfig  # noqa: E402
from pipeline.preprocess.driver import run_preprocess  # noqa: E402
from pipeline.preprocess.repatch import RepatchConfig, run_repatch  # noqa: E402

WORDS = ("the of and to in is was for on that with by as at from it an be this are or which his her "
         "patch entropy byte model data 2024 1.5 (x) [y] {z} über café 東京").split()


def write_corpus(root: Path, mbytes: float, shards: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    docs, total = [], 0
    while total < mbytes * 1e6:
        doc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 800))).encode()
        docs.append(doc)
        total += len(doc)
    (root / "raw").mkdir()
    for shard in range(shards):
        with open(root / "raw" / f"s{shard}.jsonl", "w") as handle:
            for i, doc in enumerate(docs[shard::shards]):
                handle.write(json.dumps({"id": f"{shard}-{i}", "text": doc.decode()}) + "\n")
    return docs


def write_stored_entropies(root: str | Path, mbytes: float, shards: int, seed: int = 0) -> int:
    """A dataset of stored entropies (as preprocess writes them) without running a model: re-patching's
    speed does not depend on which model made the entropies, so it is measured on more bytes than we can
    afford to push through the model here."""
    rng = np.random.default_rng(seed)
    manifest, total = Manifest(root=str(root)), 0
    per_shard = int(mbytes * 1e6 / shards)
    for shard in range(shards):
        lengths = rng.integers(200, 8000, size=per_shard // 4000 + 1)
        data = [rng.integers(32, 127, size=n, dtype=np.uint8).tobytes() for n in lengths]
        entropies = (rng.gamma(2.0, 1.0, size=int(lengths.sum())) % 5.5).astype(np.float16)
        url = f"synthetic://{shard}"
        name = entropy_shard_path(url)
        writer = ShardWriter(join(str(root), name), ENTROPY_SCHEMA)
        for first in range(0, len(data), 256):  # record batches of 256 documents, as preprocess writes them
            chunk = data[first : first + 256]
            start, stop = int(lengths[:first].sum()), int(lengths[: first + len(chunk)].sum())
            writer.write(entropy_batch([f"{shard}-{i}" for i in range(len(chunk))], [url] * len(chunk),
                                       list(range(len(chunk))), [0] * len(chunk), chunk, entropies[start:stop]))
        writer.close()
        nbytes = int(lengths.sum())
        manifest.shards[url] = ShardRecord(url, nbytes, "synthetic", name, len(data), nbytes, {}, 0.0)
        total += nbytes
    manifest.save()
    return total


def naive_loop(model: EntropyModel, docs: list[bytes], window: int) -> float:
    """One document at a time; its window-sized chunks form one batch (no context across chunks)."""
    started = time.perf_counter()
    with torch.inference_mode():
        for doc in docs:
            tokens = bytes_to_tokens(doc)
            chunks = list(tokens.split(window))
            batch = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)
            model.entropies(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mbytes", type=float, default=1.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sliding-window", type=int, default=512)
    parser.add_argument("--repatch-mbytes", type=float, default=32.0, help="stored entropies to re-patch")
    parser.add_argument("--window", type=int, default=1024, help="naive loop: chunk size")
    parser.add_argument("--span", type=int, default=16384, help="ours: bytes per model call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = EntropyModelConfig(hidden_size=args.dim, num_attention_heads=max(1, args.dim // 64),
                             num_hidden_layers=args.layers, intermediate_size=args.dim * 2,
                             sliding_window=args.sliding_window)
    model = EntropyModel(cfg).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = write_corpus(root, args.mbytes, args.shards)
        nbytes = sum(map(len, docs))
        save_entropy_model(model, str(root / "em"))
        rows.append(("naive per-document loop (1 thread)", nbytes / naive_loop(model, docs, args.window)))
        ray_runtime.connect(num_cpus=8)
        for workers in (1, 2):
            started = time.perf_counter()
            run_preprocess(PreprocessConfig(inputs=str(root / "raw" / "*.jsonl"), output=str(root / f"ds{workers}"),
                                            entropy_model=str(root / "em"), span=args.span,
                                            num_workers=workers, cpus_per_worker=1))
            rows.append((f"ours, Ray, {workers} worker(s) x 1 thread", nbytes / (time.perf_counter() - started)))
        repatch_bytes = write_stored_entropies(root / "big", args.repatch_mbytes, args.shards)
        run_repatch(RepatchConfig(str(root / "big"), PatchingParams(threshold=1.0), use_ray=False))  # warm-up
        for threshold, use_ray in ((2.0, False), (2.5, True)):  # a new patch set each time
            started = time.perf_counter()
            run_repatch(RepatchConfig(str(root / "big"), PatchingParams(threshold=threshold, max_patch_length=16),
                                      use_ray=use_ray))
            where = "Ray tasks" if use_ray else "1 process"
            rows.append((f"re-patch from stored entropies ({where})", repatch_bytes / (time.perf_counter() - started)))
    print(f"corpus {nbytes / 1e6:.2f} MB in {len(docs)} docs; entropy model dim {args.dim} x {args.layers} layers, "
          f"sliding window {args.sliding_window}; naive chunks {args.window}, our spans {args.span} (exact context)")
    print(f"{'stage':42s} {'bytes/s':>12s} {'vs naive':>9s}")
    for name, rate in rows:
        print(f"{name:42s} {rate:12.0f} {rate / rows[0][1]:8.2f}x")
    print(f"re-patch (1 process) / entropy stage (1 worker): {rows[-2][1] / rows[1][1]:.0f}x; "
          f"re-patch measured on {repatch_bytes / 1e6:.0f} MB of stored entropies")


if __name__ == "__main__":
    main()
