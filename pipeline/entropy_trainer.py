"""Entropy-model training on Ray Train: every worker reads its own raw shards with the preprocessing readers.

Rank 0 writes the checkpoint (safetensors + config, content-hashed id) that ``blt preprocess`` loads by URL,
and reports bits per byte on held-out documents.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from blt_model import EntropyModel
from blt_model.presets import entropy_preset

from .entropy_training import EntropyTrainConfig, batch_loss, packed_rows, train_entropy_model
from .model_store import save_entropy_model
from .readers import ReaderConfig, SkipLog, read_documents
from .storage import list_inputs


@dataclass
class EntropyJobConfig:
    inputs: str
    output: str  # checkpoint URL
    preset: str = "tiny"
    train: EntropyTrainConfig = field(default_factory=EntropyTrainConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    max_bytes_per_worker: int = 64 << 20  # documents a worker keeps in memory to sample windows from
    val_fraction: float = 0.05  # share of documents held out for validation bits per byte
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False


def _load_docs(urls: list[str], reader: ReaderConfig, limit: int) -> list[bytes]:
    docs, total, log = [], 0, SkipLog()
    for url in urls:
        for doc in read_documents(url, reader, log):
            docs.append(doc.data)
            total += len(doc.data)
            if total >= limit:
                return docs
    if log.total:
        print(f"[train-entropy] skipped input: {log.counts}", file=sys.stderr)
    return docs


@torch.no_grad()
def validation_bits_per_byte(model: EntropyModel, docs: list[bytes], seq_len: int) -> float:
    if not docs:
        return float("nan")
    model.eval()
    tokens, doc_ids = packed_rows(docs, seq_len)
    losses = [batch_loss(model, tokens[i : i + 8], doc_ids[i : i + 8]).item() for i in range(0, len(tokens), 8)]
    return sum(losses) / len(losses) / math.log(2)


def entropy_train_loop(config: dict) -> None:
    cfg = EntropyJobConfig(inputs=config["inputs"], output=config["output"], preset=config["preset"],
                           train=EntropyTrainConfig(**config["train"]), reader=ReaderConfig(**config["reader"]),
                           max_bytes_per_worker=config["max_bytes_per_worker"], val_fraction=config["val_fraction"])
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    urls = [o.url for o in list_inputs(cfg.inputs)]
    mine = urls[rank::world]
    if not mine:
        raise ValueError(f"rank {rank}/{world} has no input shards ({len(urls)} in total)")
    docs = _load_docs(mine, cfg.reader, cfg.max_bytes_per_worker)
    held = max(1, int(len(docs) * cfg.val_fraction)) if cfg.val_fraction > 0 and len(docs) > 1 else 0
    train_docs, val_docs = docs[held:], docs[:held]
    torch.manual_seed(cfg.train.seed)
    model = EntropyModel(entropy_preset(cfg.preset))
    forward_model = model
    if distributed:
        import ray.train.torch as ray_torch

        forward_model = ray_torch.prepare_model(model, move_to_device=False)

    def log(record: dict) -> None:
        if rank == 0:
            print(f"[train-entropy] step {record['step']} bpb {record['bits_per_byte']:.4f} "
                  f"{record['bytes_per_s']:.0f} B/s lr {record['lr']:.3g}", file=sys.stderr, flush=True)

    history = train_entropy_model(model, train_docs, cfg.train, log, forward_model, seed_offset=rank)
    val_bpb = validation_bits_per_byte(model, val_docs, cfg.train.seq_len)
    if rank == 0:
        model_id = save_entropy_model(model, cfg.output, {"train_bits_per_byte": history[-1]["bits_per_byte"],
                                                          "val_bits_per_byte": val_bpb, "inputs": cfg.inputs})
        print(json.dumps({"entropy_model": cfg.output, "id": model_id, "val_bits_per_byte": val_bpb,
                          "train_bits_per_byte": history[-1]["bits_per_byte"]}), flush=True)
    try:
        import ray.train

        ray.train.report({"bits_per_byte": history[-1]["bits_per_byte"], "val_bits_per_byte": val_bpb})
    except (ImportError, RuntimeError, AttributeError):
        pass


def run_entropy_training(cfg: EntropyJobConfig, use_ray: bool = True) -> None:
    list_inputs(cfg.inputs)  # a missing input fails here, in the driver, with one line
    config = asdict(cfg)
    if not use_ray:
        entropy_train_loop(config)
        return
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(
        entropy_train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="blt-train-entropy", storage_path=tempfile.mkdtemp(prefix="blt-ray-train-")),
    ).fit()
