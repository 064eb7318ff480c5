"""The entropy-model trainer: the model-specific parts (``EntropyTask``) run by the shared loop
(``training.loop``): streamed raw shards, DDP, DCP checkpoints with exact resume, automatic restarts, chunked
metrics, validation bits per byte.

The end product is what preprocessing loads by URL: ``<output>/config.json`` + ``model.safetensors``
(``pipeline.dataset.model_store``); checkpoints and metrics live beside it.
"""

from __future__ import annotations

import time

import torch

from blt_model import EntropyModel
from blt_model.presets import entropy_preset
from pipeline.dataset.model_store import save_entropy_model
from pipeline.io.logs import get_logger

from .config import EntropyTrainConfig, lr_lambda
from .entropy_data import EntropyStream, batch_loss, check_inputs, plan_entropy_units
from .loop import IntervalSummary, MicroStep, run_loop, run_workers, start_worker
from .optim import OptimizerSet, build_optimizers
from .parallelize import build_on_meta, materialize, wrap_ddp
from .scoring import score_batches

log = get_logger("train-entropy")


class EntropyTask:
    """The entropy model's batches (packed documents from raw shards), loss, clipping and validation."""

    def __init__(self, cfg: EntropyTrainConfig, model: EntropyModel, train_model, units: list,
                 rank: int, world: int, device: torch.device) -> None:
        self.cfg, self.model, self.train_model, self.units, self.device = cfg, model, train_model, units, device
        self.rank, self.world = rank, world
        self.stream = EntropyStream(units, cfg.reader, cfg.seq_len, cfg.batch_size, cfg.eval.validation_fraction,
                                    cfg.seed, rank, world)
        self.batches = None
        self.val_batches: list | None = None

    def micro_step(self, scale: float, sync: bool) -> MicroStep:
        if self.batches is None:
            self.batches = iter(self.stream)
        wait_started = time.perf_counter()
        tokens, segments = next(self.batches)
        wait = time.perf_counter() - wait_started
        loss = batch_loss(self.train_model, tokens.to(self.device), segments.to(self.device))
        (loss * scale).backward()
        return MicroStep(loss.detach(), tokens[:, :-1].numel(), wait)

    def clip_gradients(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)

    def record(self, summary: IntervalSummary) -> dict:
        return {"epoch": self.stream.state["epoch"]}

    def _loss(self, batch) -> tuple[torch.Tensor, int]:
        tokens, segments = batch
        return batch_loss(self.model, tokens.to(self.device), segments.to(self.device)), tokens[:, :-1].numel()

    def validate(self) -> dict[str, float]:
        cfg = self.cfg
        if cfg.eval.validation_fraction <= 0:
            return {}
        if self.val_batches is None:  # the same held-out batches on every rank, read once
            val = EntropyStream(self.units, cfg.reader, cfg.seq_len, cfg.batch_size, cfg.eval.validation_fraction,
                                cfg.seed, validation=True)
            self.val_batches = [b for _, b in zip(range(cfg.eval.batches), val)]
        return {"val_bits_per_byte": score_batches(self.model, self.val_batches, self._loss).bits_per_byte}

    def rank_state(self) -> dict:
        return {"stream": self.stream.state_dict()}

    def load_rank_states(self, states: list[dict]) -> None:
        self.stream.load_state_dicts([s["stream"] for s in states])  # any worker count: the same re-deal
        if self.rank == 0:
            log.info("resuming the stream written by %d workers on %d", len(states), self.world)

    def after_checkpoint(self, step: int) -> None:
        """Nothing: an entropy model has no text samples to show (its curve is its bits/byte)."""


def entropy_train_loop(config: dict) -> None:
    cfg = EntropyTrainConfig(**config)
    rank, world, device = start_worker(cfg)
    units = plan_entropy_units(cfg.inputs, cfg.reader)
    model = build_on_meta(lambda: EntropyModel(entropy_preset(cfg.preset)))
    materialize(model, device, cfg.seed)
    train_model = wrap_ddp(model, device, find_unused=False) if world > 1 else model
    optim = OptimizerSet(build_optimizers(model, cfg.optim.lr, cfg.optim.weight_decay, sparse_hash_grad=False),
                         lr_lambda(cfg.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
    task = EntropyTask(cfg, model, train_model, units, rank, world, device)
    result = run_loop(cfg, task, model, optim, device)
    if result.step >= cfg.steps and rank == 0:
        last = result.last
        model_id = save_entropy_model(model.cpu(), cfg.output, {
            "train_bits_per_byte": last.get("bits_per_byte"), "val_bits_per_byte": last.get("val_bits_per_byte"),
            "inputs": cfg.inputs, "steps": result.step})
        log.info("entropy model %s -> %s", model_id, cfg.output)
    if task.stream.skips.total and rank == 0:
        log.warning("skipped input: %s", task.stream.skips.counts)


def check_config(cfg: EntropyTrainConfig) -> None:
    """What no restart can fix: bad values, an unknown preset, missing inputs, no training document."""
    for name in ("seq_len", "batch_size", "steps"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for flag, value in (("log.every", cfg.log.every), ("eval.every", cfg.eval.every),
                        ("eval.batches", cfg.eval.batches), ("cluster.num-workers", cfg.cluster.num_workers),
                        ("checkpoint.every", cfg.checkpoint.every)):
        if value < 1:
            raise ValueError(f"--{flag} must be at least 1, got {value}")
    if not 0 <= cfg.eval.validation_fraction < 1:
        raise ValueError(f"--eval.validation-fraction must be in [0, 1), got {cfg.eval.validation_fraction}")
    entropy_preset(cfg.preset)
    check_inputs(plan_entropy_units(cfg.inputs, cfg.reader), cfg.reader, cfg.eval.validation_fraction, cfg.seed)


def run_entropy_training(cfg: EntropyTrainConfig, use_ray: bool = True) -> dict:
    """Launch the workers (restarted automatically); returns the last metrics record."""
    check_config(cfg)  # deterministic errors fail here, in the driver, with one line: never retried
    return run_workers(entropy_train_loop, cfg, "blt-train-entropy", use_ray)
