"""BLT training on Ray Train: per-worker loop, DDP (gloo on CPU, NCCL on GPU), exact resume, metrics.

``fsdp=True`` shards the model with FSDP2 instead (checkpoints hold full state dicts either way).
Every worker streams its own shards through ``PatchedWindowLoader``; rank 0 writes the model, optimizer,
scheduler and step, every rank writes its loader position, and a pointer commits the checkpoint. A resumed
run replays exactly the batches and (within float tolerance) the loss curve of an uninterrupted one.
Metrics per logged step: loss, bits per byte, bytes/s, patches/s, data-wait fraction, learning rate, plus
validation bits per byte on held-out shards; printed, reported to Ray Train and written as JSONL.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from blt_model import BltConfig, ByteLatentTransformer
from blt_model.hf_interop import save_hf_checkpoint
from blt_model.layers import TransformerLayer
from blt_model.presets import blt_preset

from . import checkpoints
from .loader import LoaderConfig, PatchedWindowLoader
from .manifest import Manifest
from .optim import HASH_TABLE_PARAM, build_optimizers, init_sparse_optimizer_state, reduce_and_clip
from .storage import exists, join, read_bytes, write_bytes_atomic


@dataclass
class TrainConfig:
    dataset: str
    output: str
    patch_set: str | None = None  # params key of the patch set to train on; None = the dataset default
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # BltConfig fields (HF names) over the preset
    seq_len: int = 512
    batch_size: int = 4  # per worker
    steps: int = 100
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 50
    val_shards: int = 0  # hold out the last N shards (manifest order) for validation
    eval_every: int = 50
    eval_batches: int = 4
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or "fp32" / "bf16"
    attn_implementation: str = "sdpa"
    compile: bool = False
    seed: int = 0
    export_hf: bool = True
    fsdp: bool = False  # FSDP2 (fully_shard per transformer layer) instead of DDP, for large configs
    # Sparse gradients + SparseAdam for the hash n-gram tables (pipeline/optim.py); DDP or one worker only.
    sparse_hash_grad: bool = False
    stop_after: int | None = None  # end this run after N steps (as if killed right after a checkpoint)
    audit_docs: bool = False  # write the ids of the documents each rank read to <output>/audit/rank-N.json

    def __post_init__(self) -> None:
        if self.sparse_hash_grad and self.fsdp:
            raise ValueError("sparse_hash_grad works with DDP or one worker, not FSDP2 (which shards the hash "
                             "tables as dense tensors)")

    def model_config(self) -> BltConfig:
        return blt_preset(self.preset, attn_implementation=self.attn_implementation, **self.model_overrides)


def split_shards(manifest: Manifest, val_shards: int) -> tuple[list[str], list[str]]:
    urls = sorted(manifest.shards)
    if val_shards >= len(urls):
        raise ValueError(f"val_shards={val_shards} leaves no training shards ({len(urls)} in total)")
    cut = len(urls) - val_shards
    return urls[:cut], urls[cut:]


def _lr_lambda(cfg: TrainConfig):
    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across_workers(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass
class ThroughputWindow:
    """Sums since the last logged step (this worker's)."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    loss: float = 0.0
    bytes: int = 0
    patches: int = 0
    wait: float = 0.0

    def add(self, loss: float, nbytes: int, patches: int) -> None:
        self.steps += 1
        self.loss += loss
        self.bytes += nbytes
        self.patches += patches


class MetricsLog:
    """metrics.jsonl at the output root, rewritten whole (object stores have no append); truncated on resume."""

    def __init__(self, output: str, resume_step: int) -> None:
        self.url = join(output, "metrics.jsonl")
        self.records: list[dict] = []
        if resume_step and exists(self.url):
            lines = read_bytes(self.url).decode().splitlines()
            self.records = [r for r in map(json.loads, lines) if r["step"] <= resume_step]

    def append(self, record: dict) -> None:
        self.records.append(record)
        write_bytes_atomic(self.url, "".join(json.dumps(r) + "\n" for r in self.records).encode())


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker (or in-process with ray disabled)."""
    cfg = TrainConfig(**config)
    rank, world = _distributed()
    try:
        import ray.train.torch as ray_torch

        device = ray_torch.get_device() if world > 1 or cfg.use_gpu else torch.device("cpu")
    except ImportError:  # pragma: no cover - ray is a dependency, but the loop itself does not need it
        ray_torch, device = None, torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model_config()
    model = ByteLatentTransformer(model_cfg, sparse_hash_grad=cfg.sparse_hash_grad).to(device)
    if cfg.fsdp and world > 1:
        shard_model(model)
    optimizers = build_optimizers(model, cfg.lr, cfg.weight_decay, cfg.sparse_hash_grad)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg)) for opt in optimizers]
    manifest = Manifest.load(cfg.dataset)
    train_urls, val_urls = split_shards(manifest, cfg.val_shards)
    loader = PatchedWindowLoader(LoaderConfig(cfg.dataset, cfg.patch_set, cfg.seq_len, cfg.batch_size, rank, world,
                                              shards=train_urls))
    step = 0
    pointer = checkpoints.latest(cfg.output)
    if pointer is not None:
        step = pointer["step"]
        state = checkpoints.load_trainer_state(cfg.output, step)
        if state["config"].get("sparse_hash_grad", False) != cfg.sparse_hash_grad:
            raise ValueError(f"checkpoint was written with sparse_hash_grad={not cfg.sparse_hash_grad}, this run has "
                             f"{cfg.sparse_hash_grad}: their optimizers differ; resume with the same setting")
        if pointer["world_size"] != world:
            raise ValueError(f"checkpoint was written by {pointer['world_size']} workers, this run has {world}")
        init_sparse_optimizer_state(optimizers)
        set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        saved_schedulers = state["schedulers"] if "schedulers" in state else [state["scheduler"]]  # older runs
        for scheduler, scheduler_state in zip(schedulers, saved_schedulers, strict=True):
            scheduler.load_state_dict(scheduler_state)
        loader.load_state_dict(checkpoints.load_rank_state(cfg.output, step, rank)["loader"])
        if rank == 0:
            print(f"[train] resumed from step {step} ({pointer['path']})", file=sys.stderr, flush=True)
    train_model = model
    if world > 1 and ray_torch is not None and not cfg.fsdp:
        # HF keeps per-layer encoder cross-attention weights of which only the last one is used.
        enc = model_cfg.encoder_config
        unused = enc.cross_attn_all_layers and enc.num_hidden_layers > 1
        if cfg.sparse_hash_grad:  # DDP cannot reduce sparse gradients: sync_sparse_grads does it
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, [HASH_TABLE_PARAM])
        train_model = ray_torch.prepare_model(model, move_to_device=False,
                                              parallel_strategy_kwargs={"find_unused_parameters": unused})
    if cfg.compile:
        train_model = torch.compile(train_model)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    metrics = MetricsLog(cfg.output, step) if rank == 0 else None
    window = ThroughputWindow()
    batches = iter(loader)
    run_steps = 0
    seen_docs: list[str] = []
    model.train()
    while step < cfg.steps:
        wait_started = time.perf_counter()
        batch = next(batches)
        window.wait += time.perf_counter() - wait_started
        tokens, labels = batch.tokens.to(device), batch.labels.to(device)
        lengths = batch.patch_lengths.to(device)
        with autocast():
            loss = train_model(tokens, lengths, labels).loss
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        reduce_and_clip(model, cfg.grad_clip, world, cfg.sparse_hash_grad)
        for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
            optimizer.step()
            scheduler.step()
        step += 1
        run_steps += 1
        window.add(loss.item(), tokens.numel(), batch.num_patches)
        if cfg.audit_docs:
            seen_docs.extend(batch.doc_ids)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window.started
            record = {
                "step": step,
                "loss": _mean_across_workers(window.loss / window.steps, device),
                "bytes_per_s": _mean_across_workers(window.bytes / elapsed, device) * world,
                "patches_per_s": _mean_across_workers(window.patches / elapsed, device) * world,
                "data_wait_fraction": _mean_across_workers(window.wait / elapsed, device),
                "lr": schedulers[0].get_last_lr()[0],
                "epoch": loader.state_dict()["epoch"],
            }
            record["bits_per_byte"] = record["loss"] / math.log(2)
            if val_urls and (step % cfg.eval_every == 0 or step == cfg.steps):
                record["val_bits_per_byte"] = evaluate(model, cfg, val_urls, device, autocast) / math.log(2)
            if rank == 0:
                metrics.append(record)
                print("[train] " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in record.items()), file=sys.stderr, flush=True)
            _report(record)
            window = ThroughputWindow()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(cfg, step, model, optimizers, schedulers, loader, rank, world)
        if cfg.stop_after is not None and run_steps >= cfg.stop_after:
            break
    if cfg.audit_docs:
        write_bytes_atomic(join(cfg.output, "audit", f"rank-{rank:05d}.json"), json.dumps(seen_docs).encode())
    if step >= cfg.steps and cfg.export_hf:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            export = ByteLatentTransformer(model_cfg)
            export.load_state_dict(full)
            export_hf(export, cfg.output)


def _report(record: dict) -> None:
    try:
        import ray.train

        if ray.train.get_context() is not None:
            ray.train.report(record)
    except (ImportError, RuntimeError, AttributeError):
        pass


@torch.no_grad()
def evaluate(model, cfg: TrainConfig, val_urls: list[str], device, autocast) -> float:
    """Mean loss (nats/byte) on the first ``eval_batches`` batches of the held-out shards (same on every rank)."""
    loader = PatchedWindowLoader(LoaderConfig(cfg.dataset, cfg.patch_set, cfg.seq_len, cfg.batch_size, 0, 1,
                                              shards=val_urls, prefetch=1))
    model.eval()
    total = 0.0
    batches = iter(loader)
    for _ in range(cfg.eval_batches):
        batch = next(batches)
        with autocast():
            total += model(batch.tokens.to(device), batch.patch_lengths.to(device), batch.labels.to(device)).loss.item()
    model.train()
    return total / cfg.eval_batches


def shard_model(model: ByteLatentTransformer) -> None:
    """FSDP2: every transformer layer is its own shard unit, the rest (embeddings, hash tables, heads) the root."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, TransformerLayer):
            fully_shard(module)
    fully_shard(model)


def save_checkpoint(cfg: TrainConfig, step: int, model, optimizers, schedulers, loader, rank: int, world: int) -> None:
    """Full (unsharded) model and optimizer state, gathered on every rank and written by rank 0, so a run can
    resume with or without FSDP."""
    checkpoints.save_rank_state(cfg.output, step, rank, {"loader": loader.state_dict()})
    model_state, optim_state = get_state_dict(model, optimizers,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        checkpoints.save_trainer_state(cfg.output, step, {
            "model": model_state, "optimizer": optim_state, "schedulers": [s.state_dict() for s in schedulers],
            "step": step, "config": asdict(cfg),
        })
    _barrier()
    if rank == 0:
        checkpoints.commit(cfg.output, step, world)
    _barrier()


def export_hf(model: ByteLatentTransformer, output: str) -> str:
    """HF-format export (config.json + model.safetensors) at ``<output>/hf``; returns its URL."""
    url = join(output, "hf")
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(model, tmp)
        for path in Path(tmp).iterdir():
            write_bytes_atomic(join(url, path.name), path.read_bytes())
    return url


def run_training(cfg: TrainConfig, use_ray: bool = True) -> dict:
    """Launch the workers; returns the last metrics record."""
    if cfg.seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    Manifest.load(cfg.dataset)  # fail early, in the driver, on a missing dataset
    if not use_ray:
        train_loop(asdict(cfg))
    else:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        storage = tempfile.mkdtemp(prefix="blt-ray-train-")
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=asdict(cfg),
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=RunConfig(name="blt-train", storage_path=storage),
        )
        trainer.fit()
    log = join(cfg.output, "metrics.jsonl")
    lines = read_bytes(log).decode().splitlines() if exists(log) else []
    return json.loads(lines[-1]) if lines else {}
