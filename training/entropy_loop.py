"""The entropy-model training loop, on the same components as the BLT's: streamed raw shards, DDP, DCP
checkpoints with exact resume, automatic restarts, chunked metrics, validation bits per byte.

The end product is what preprocessing loads by URL: ``<output>/config.json`` + ``model.safetensors``
(``pipeline.model_store``); checkpoints and metrics live beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch

from blt_model import EntropyModel
from blt_model.presets import entropy_preset
from pipeline.logs import get_logger, setup_logging
from pipeline.model_store import save_entropy_model

from . import distributed
from .checkpoint import Checkpointer
from .config import EntropyTrainConfig, lr_lambda
from .entropy_data import EntropyStream, batch_loss, check_inputs, plan_entropy_units
from .launch import launch, maybe_kill, quiet_ray_worker, report
from .metrics import MetricsWriter, read_metrics
from .parallelize import build_on_meta, materialize, wrap_ddp

log = get_logger("train-entropy")


@torch.no_grad()
def evaluate(model: EntropyModel, batches: list, device) -> float:
    """Bits per byte over the held-out batches."""
    if not batches:
        return float("nan")
    model.eval()
    losses = [batch_loss(model, t.to(device), s.to(device)).item() for t, s in batches]
    model.train()
    return sum(losses) / len(losses) / math.log(2)


def entropy_train_loop(config: dict) -> None:
    setup_logging()
    quiet_ray_worker()
    cfg = EntropyTrainConfig(**config)
    rank, world = distributed.rank_world()
    device = distributed.device(cfg.use_gpu)
    units = plan_entropy_units(cfg.inputs, cfg.reader)
    stream = EntropyStream(units, cfg.reader, cfg.seq_len, cfg.batch_size, cfg.val_fraction, cfg.seed, rank, world)
    val_batches: list | None = None
    torch.manual_seed(cfg.seed)
    model = build_on_meta(lambda: EntropyModel(entropy_preset(cfg.preset)))
    materialize(model, device, cfg.seed)
    train_model = wrap_ddp(model, device, find_unused=False) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    ckpt = Checkpointer(cfg.output, cfg.checkpoint)
    step = 0
    restored = ckpt.load(model, [optimizer]) if ckpt.has_checkpoint() else None
    if restored is not None:
        step = restored.step
        scheduler.load_state_dict(restored.shared["schedulers"][0])
        stream.load_state_dicts([s["stream"] for s in restored.rank_states])
        if rank == 0:
            log.info("resumed from step %d (written by %d workers, now %d)", step, len(restored.rank_states), world)
    metrics = MetricsWriter(cfg.output, cfg.metrics_flush_every) if rank == 0 else None
    batches = iter(stream)
    started, nbytes, loss_sum, steps_in_window, run_steps = time.perf_counter(), 0, 0.0, 0, 0
    last: dict = {}
    model.train()
    while step < cfg.steps:
        tokens, segments = next(batches)
        loss = batch_loss(train_model, tokens.to(device), segments.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        run_steps += 1
        steps_in_window += 1
        loss_sum = loss_sum + loss.detach()
        nbytes += tokens[:, :-1].numel()
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean_loss, rate = distributed.mean([float(loss_sum) / steps_in_window,
                                                nbytes / (time.perf_counter() - started)], device)
            record = {"step": step, "loss": mean_loss, "bits_per_byte": mean_loss / math.log(2),
                      "bytes_per_s": rate * world, "lr": scheduler.get_last_lr()[0],
                      "epoch": stream.state["epoch"]}
            if cfg.val_fraction > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
                if val_batches is None:  # the same held-out batches on every rank, read once
                    val = EntropyStream(units, cfg.reader, cfg.seq_len, cfg.batch_size, cfg.val_fraction, cfg.seed,
                                        validation=True)
                    val_batches = [b for _, b in zip(range(cfg.eval_batches), val)]
                record["val_bits_per_byte"] = evaluate(model, val_batches, device)
            if rank == 0:
                metrics.append(record)
                log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            report(record)
            last = record
            started, nbytes, loss_sum, steps_in_window = time.perf_counter(), 0, 0.0, 0
        if step % cfg.checkpoint.every == 0 or step == cfg.steps:
            if metrics is not None:
                metrics.flush()
            ckpt.save(step, model, [optimizer], {"schedulers": [scheduler.state_dict()], "config": asdict(cfg)},
                      {"stream": stream.state_dict()})
        maybe_kill(step, cfg.kill_at_step, cfg.output, rank, world)
        if cfg.stop_after is not None and run_steps >= cfg.stop_after:
            break
    ckpt.wait()
    if metrics is not None:
        metrics.close()
    if step >= cfg.steps and rank == 0:
        model_id = save_entropy_model(model.cpu(), cfg.output, {
            "train_bits_per_byte": last.get("bits_per_byte"), "val_bits_per_byte": last.get("val_bits_per_byte"),
            "inputs": cfg.inputs, "steps": step})
        log.info("entropy model %s -> %s", model_id, cfg.output)
    if stream.skips.total and rank == 0:
        log.warning("skipped input: %s", stream.skips.counts)


def check_config(cfg: EntropyTrainConfig) -> None:
    """What no restart can fix: bad values, an unknown preset, missing inputs, no training document."""
    for name in ("seq_len", "batch_size", "steps", "log_every", "eval_every", "eval_batches", "num_workers"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.checkpoint.every < 1:
        raise ValueError(f"--checkpoint.every must be at least 1, got {cfg.checkpoint.every}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    entropy_preset(cfg.preset)
    check_inputs(plan_entropy_units(cfg.inputs, cfg.reader), cfg.reader, cfg.val_fraction, cfg.seed)


def run_entropy_training(cfg: EntropyTrainConfig, use_ray: bool = True) -> dict:
    """Launch the workers (restarted automatically); returns the last metrics record."""
    check_config(cfg)  # deterministic errors fail here, in the driver, with one line: never retried
    launch(entropy_train_loop, asdict(cfg), name="blt-train-entropy", output=cfg.output, num_workers=cfg.num_workers,
           use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker, max_failures=cfg.max_failures, use_ray=use_ray)
    records = read_metrics(cfg.output)
    return records[-1] if records else {}
