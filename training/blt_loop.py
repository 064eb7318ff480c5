"""The BLT training loop (one per worker): stream windows, accumulate, step, log, checkpoint, resume, export.

Every worker streams its own part of the dataset through ``PatchedWindowLoader``; a resumed run (after a restart
or a re-run of the same command) replays exactly the batches and, within float tolerance, the loss curve of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from blt_model import ByteLatentTransformer
from pipeline.loader import LoaderConfig, PatchedWindowLoader
from pipeline.logs import get_logger, setup_logging
from pipeline.manifest import Manifest
from pipeline.storage import join, write_bytes_atomic

from . import distributed
from .checkpoint import Checkpointer
from .config import TrainConfig, lr_lambda
from .evaluate import training_val_shards, training_validation
from .export import export_trained
from .launch import launch, maybe_kill, quiet_ray_worker, report
from .metrics import MetricsWriter, read_metrics
from .model_source import record_run_patching
from .optim import HASH_TABLE_PARAM, build_optimizers, init_sparse_optimizer_state, reduce_and_clip
from .parallelize import (
    apply_activation_checkpointing,
    build_on_meta,
    fully_shard_model,
    materialize,
    no_sync,
    wrap_ddp,
)

log = get_logger("train")


def split_shards(manifest: Manifest, val_shards: int) -> tuple[list[str], list[str]]:
    urls = sorted(manifest.shards)
    if val_shards >= len(urls):
        raise ValueError(f"val_shards={val_shards} leaves no training shards ({len(urls)} in total)")
    cut = len(urls) - val_shards
    return urls[:cut], urls[cut:]


@dataclass
class Window:
    """Sums since the last logged step (this worker's); the loss stays on the device until logged."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    loss: torch.Tensor | float = 0.0
    bytes: int = 0
    patches: int = 0
    sequences: int = 0
    wait: float = 0.0


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def build(cfg: TrainConfig, device: torch.device, world: int):
    """(model, train_model, optimizers, autocast): ``model`` holds the parameters (FSDP2-sharded or not),
    ``train_model`` is what the step calls (DDP wrapper and/or compiled)."""
    model_cfg = cfg.model_config()
    model = build_on_meta(lambda: ByteLatentTransformer(model_cfg, sparse_hash_grad=cfg.sparse_hash_grad))
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    bf16 = use_bf16(cfg, device)
    sharded = cfg.fsdp and distributed.initialized()
    # FSDP2 on GPU: bf16 parameters in compute, fp32 gradient reduction (no autocast needed on top).
    fsdp_bf16 = sharded and bf16 and device.type == "cuda"
    if sharded:
        fully_shard_model(model, torch.bfloat16 if fsdp_bf16 else None)
    materialize(model, device, cfg.seed)
    train_model = model
    if world > 1 and not sharded:
        enc = model_cfg.encoder_config  # HF keeps per-layer cross-attention weights of which only the last is used
        train_model = wrap_ddp(model, device, find_unused=enc.cross_attn_all_layers and enc.num_hidden_layers > 1,
                               ignore=[HASH_TABLE_PARAM] if cfg.sparse_hash_grad else [])
    if cfg.compile:
        train_model = torch.compile(train_model)
    optimizers = build_optimizers(model, cfg.lr, cfg.weight_decay, cfg.sparse_hash_grad)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 and not fsdp_bf16
                else contextlib.nullcontext)
    return model, train_model, optimizers, autocast


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker (or in-process)."""
    setup_logging()
    quiet_ray_worker()
    cfg = TrainConfig(**config)
    rank, world = distributed.rank_world()
    device = distributed.device(cfg.use_gpu)
    torch.manual_seed(cfg.seed)
    model, train_model, optimizers, autocast = build(cfg, device, world)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
                  for opt in optimizers]
    train_urls, val_urls = split_shards(Manifest.load(cfg.dataset), cfg.val_shards)
    loader = PatchedWindowLoader(LoaderConfig(cfg.dataset, cfg.patch_set, cfg.seq_len, cfg.batch_size, rank, world,
                                              shards=None if cfg.stream.mix else train_urls, stream=cfg.stream))
    if rank == 0:
        record_run_patching(cfg.output, cfg.dataset, loader.patch_set)  # the rule generate/export read back
    ckpt = Checkpointer(cfg.output, cfg.checkpoint)
    step = 0
    if ckpt.has_checkpoint():
        if cfg.sparse_hash_grad:
            init_sparse_optimizer_state(optimizers)

        def check(shared: dict) -> None:
            if shared["config"].get("sparse_hash_grad", False) != cfg.sparse_hash_grad:
                raise ValueError(f"checkpoint was written with sparse_hash_grad={not cfg.sparse_hash_grad}, this run "
                                 f"has {cfg.sparse_hash_grad}: their optimizers differ; resume with the same setting")

        restored = ckpt.load(model, optimizers, check)
        step = restored.step
        for scheduler, state in zip(schedulers, restored.shared["schedulers"], strict=True):
            scheduler.load_state_dict(state)
        loader.load_state_dicts([s["loader"] for s in restored.rank_states])
        if rank == 0:
            log.info("resumed from step %d (written by %d workers, now %d)", step, len(restored.rank_states), world)
    metrics = MetricsWriter(cfg.output, cfg.metrics_flush_every) if rank == 0 else None
    global_batch = world * cfg.batch_size * cfg.grad_accum
    if rank == 0:
        log.info("global batch %d sequences = %d workers x %d x %d accumulation, %d bytes each", global_batch, world,
                 cfg.batch_size, cfg.grad_accum, cfg.seq_len)
    window = Window()
    batches = iter(loader)
    run_steps = 0
    seen_docs: list[str] = []
    model.train()
    while step < cfg.steps:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            wait_started = time.perf_counter()
            batch = next(batches)
            window.wait += time.perf_counter() - wait_started
            tokens, labels = batch.tokens.to(device), batch.labels.to(device)
            with no_sync(train_model, model, sync=micro == cfg.grad_accum - 1):
                with autocast():
                    loss = train_model(tokens, batch.patch_lengths.to(device), labels).loss
                (loss / cfg.grad_accum).backward()
            window.loss = window.loss + loss.detach() / cfg.grad_accum
            window.bytes += tokens.numel()
            window.patches += batch.num_patches
            window.sequences += tokens.shape[0]
            if cfg.audit_docs:
                seen_docs.extend(batch.doc_ids)
        reduce_and_clip(model, cfg.grad_clip, world, cfg.sparse_hash_grad)
        for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
            optimizer.step()
            scheduler.step()
        step += 1
        run_steps += 1
        window.steps += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = _record(cfg, step, window, world, device, schedulers[0], loader)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                if val_urls:
                    record["val_bits_per_byte"] = evaluate(model, cfg, val_urls, device, autocast) / math.log(2)
                if cfg.stream.validation_fraction > 0:
                    record.update(evaluate_sources(model, cfg, loader, device, autocast))
            if rank == 0:
                metrics.append(record)
                log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            report(record)
            window = Window()
        if step % cfg.checkpoint.every == 0 or step == cfg.steps:
            if metrics is not None:
                metrics.flush()
            ckpt.save(step, model, optimizers, {"schedulers": [s.state_dict() for s in schedulers],
                                                "config": asdict(cfg)}, {"loader": loader.state_dict()})
        maybe_kill(step, cfg.kill_at_step, cfg.output, rank, world)
        if cfg.stop_after is not None and run_steps >= cfg.stop_after:
            break
    ckpt.wait()
    if metrics is not None:
        metrics.close()
    if cfg.audit_docs:
        write_bytes_atomic(join(cfg.output, "audit", f"rank-{rank:05d}.json"), json.dumps(seen_docs).encode())
    if step >= cfg.steps and cfg.export_hf:
        export_trained(model, cfg.model_config(), cfg.output, rank)


def _record(cfg: TrainConfig, step: int, window: Window, world: int, device, scheduler, loader) -> dict:
    elapsed = time.perf_counter() - window.started
    loss = float(window.loss) / window.steps
    loss, bps, pps, wait, nbytes, patches, seqs = distributed.mean(
        [loss, window.bytes / elapsed, window.patches / elapsed, window.wait / elapsed, window.bytes, window.patches,
         window.sequences], device)
    return {
        "step": step,
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "bytes_per_s": bps * world,
        "patches_per_s": pps * world,
        "bytes_per_patch": nbytes / max(patches, 1e-9),
        "patches_per_sequence": patches / max(seqs, 1e-9),
        "data_wait_fraction": wait,
        "lr": scheduler.get_last_lr()[0],
        "global_batch": world * cfg.batch_size * cfg.grad_accum,
        "epoch": loader.state_dict().get("epoch", 0),
        **{f"mix_share/{name}": s["share"] for name, s in loader.mix_stats().items()},
    }


@torch.no_grad()
def evaluate(model, cfg: TrainConfig, val_urls: list[str], device, autocast) -> float:
    """Mean loss (nats/byte) on the held-out shards' documents, scored whole (``training.scoring``)."""
    return training_val_shards(model, cfg, val_urls, autocast)


@torch.no_grad()
def evaluate_sources(model, cfg: TrainConfig, loader: PatchedWindowLoader, device, autocast) -> dict:
    """Validation bits per byte on the held-out documents of every source (and over all of them), scored whole
    by ``training.scoring`` (the same numbers as ``blt eval``), at most ``eval_batches`` batches of windows per
    source; the same on every rank."""
    return training_validation(model, cfg, loader, autocast)


def run_training(cfg: TrainConfig, use_ray: bool = True) -> dict:
    """Launch the workers (restarted automatically up to ``max_failures`` times); returns the last metrics record."""
    if cfg.seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    Manifest.load(cfg.dataset)  # fail early, in the driver, on a missing dataset
    launch(train_loop, asdict(cfg), name="blt-train", output=cfg.output, num_workers=cfg.num_workers,
           use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker, max_failures=cfg.max_failures, use_ray=use_ray)
    records = read_metrics(cfg.output)
    return records[-1] if records else {}
