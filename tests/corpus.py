"""Test data written by the tests themselves: jsonl(.zst/.gz) shards, a tiny entropy model checkpoint."""

from __future__ import annotations

import gzip
import json
import random

import fsspec
import torch
import zstandard

from blt_model import EntropyModel, EntropyModelConfig
from pipeline.dataset.model_store import save_entropy_model

TINY = EntropyModelConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                          sliding_window=16)
WORDS = "alpha beta gamma delta patch entropy byte latent transformer river stone cloud 42 1999 ünïcödé 東京".split()


def make_docs(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"s{seed}-{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))}
            for i in range(count)]


def jsonl_bytes(records: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records).encode()


def write_object(url: str, data: bytes, compression: str | None = None) -> None:
    if compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    elif compression == "gzip":
        data = gzip.compress(data)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe(path, data)


def save_tiny_entropy_model(url: str, seed: int = 0) -> EntropyModel:
    torch.manual_seed(seed)
    model = EntropyModel(TINY).eval()
    with torch.no_grad():  # sharper, varied predictions, like a trained model (entropies spread over 0..5 nats)
        model.lm_head.weight.mul_(8.0)
    save_entropy_model(model, url)
    return model


def write_real_text(root: str, code_bytes: int, prose_bytes: int, doc_bytes: int = 2048) -> None:
    """Two sources of real text as jsonl: ``code/`` from Python's stdlib sources, ``prose/`` from the Python
    reference manual's topics (``pydoc_data``); ``doc_bytes`` chunks become documents, in a fixed order."""
    import sysconfig
    from pathlib import Path
    from pydoc_data.topics import topics

    def chunks(texts, limit: int, prefix: str) -> list[dict]:
        docs, total = [], 0
        for text in texts:
            for start in range(0, len(text), doc_bytes):
                piece = text[start : start + doc_bytes]
                docs.append({"id": f"{prefix}-{len(docs)}", "text": piece})
                total += len(piece.encode())
                if total >= limit:
                    return docs
        return docs

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = (p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py")))
    prose = (topics[name] for name in sorted(topics))
    write_object(f"{root}/code/stdlib.jsonl", jsonl_bytes(chunks(code, code_bytes, "code")))
    write_object(f"{root}/prose/topics.jsonl", jsonl_bytes(chunks(prose, prose_bytes, "prose")))
