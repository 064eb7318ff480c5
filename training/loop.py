"""The training loop skeleton both trainers run: step, accumulate, log, validate, checkpoint, drills, resume.

A model brings a ``TrainTask`` (its batches, forward/backward, gradient clipping, validation, extra record fields,
data-loader state); ``run_loop`` does everything else the same way for the BLT and the entropy model. A logged
record is built in ``_log_record`` and a checkpoint written in ``_checkpoint`` (one place each, for per-step
accounting such as FLOPs or work done at every checkpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from pipeline.io.logs import get_logger, setup_logging

from . import distributed, fatal
from .checkpoint import Checkpointer
from .config import EntropyTrainConfig, TrainConfig
from .flops import FlopMeter
from .launch import launch, maybe_kill, quiet_ray_worker, report
from .metrics import MetricsWriter, read_metrics
from .optim import OptimizerSet
from .run_dashboard import announce_run

log = get_logger("train")

RunConfig = TrainConfig | EntropyTrainConfig


@dataclass
class MicroStep:
    """What one forward/backward on one batch reports to the loop."""

    loss: torch.Tensor  # the batch's mean loss, detached (stays on the device until a record is logged)
    bytes: int  # bytes (tokens) trained on
    wait: float = 0.0  # seconds spent waiting for the batch
    counts: dict[str, float] = field(default_factory=dict)  # model-specific sums (patches, sequences)


@dataclass
class LogInterval:
    """Sums over the steps since the last logged record (this worker's)."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    loss: torch.Tensor | float = 0.0
    bytes: int = 0
    wait: float = 0.0
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, micro: MicroStep, scale: float) -> None:
        self.loss = self.loss + micro.loss * scale
        self.bytes += micro.bytes
        self.wait += micro.wait
        for name, value in micro.counts.items():
            self.counts[name] = self.counts.get(name, 0) + value


@dataclass
class IntervalSummary:
    """A log interval averaged over ranks: ``rates`` per second summed over ranks, ``totals`` (``bytes`` and the
    task's counts) the mean rank's sums."""

    loss: float
    bytes_per_s: float
    wait_fraction: float
    totals: dict[str, float]
    rates: dict[str, float]


class TrainTask(Protocol):
    """The model-specific parts of a training run."""

    def micro_step(self, scale: float, sync: bool) -> MicroStep:
        """Next batch, forward, ``(loss * scale).backward()``; ``sync``: the last micro-step (gradients reduce)."""

    def clip_gradients(self) -> None: ...

    def record(self, summary: IntervalSummary) -> dict:
        """Extra fields of a logged record."""

    def validate(self) -> dict[str, float]:
        """Validation fields (``val_bits_per_byte``...); empty when nothing is held out."""

    def rank_state(self) -> dict:
        """This rank's data position, saved with each checkpoint."""

    def load_rank_states(self, states: list[dict]) -> None:
        """Resume the data from the writing run's rank states (one per rank of that run)."""

    def after_checkpoint(self, step: int) -> None:
        """Called on every rank once step ``step``'s checkpoint is saved (e.g. rank 0 writes samples)."""


@dataclass
class LoopResult:
    step: int  # the last step taken (== cfg.steps when the run finished)
    last: dict  # the last logged record


def format_record(record: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


def start_worker(cfg: RunConfig) -> tuple[int, int, torch.device]:
    """(rank, world, device) of this worker, with logging set up and the run's seed applied."""
    setup_logging()
    quiet_ray_worker()
    rank, world = distributed.rank_world()
    device = distributed.device(cfg.cluster.use_gpu)
    torch.manual_seed(cfg.seed)
    return rank, world, device


def run_workers(loop, cfg: RunConfig, name: str, use_ray: bool) -> dict:
    """Launch ``loop(asdict(cfg))`` on the run's workers (restarted automatically up to ``max_failures`` times);
    returns the last metrics record."""
    cluster = cfg.cluster
    announce_run(cfg.output, asdict(cfg))
    launch(loop, asdict(cfg), name=name, output=cfg.output, num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
           cpus_per_worker=cluster.cpus_per_worker, max_failures=cluster.max_failures, use_ray=use_ray)
    records = read_metrics(cfg.output)
    return records[-1] if records else {}


def _summarize(interval: LogInterval, device: torch.device) -> IntervalSummary:
    elapsed = time.perf_counter() - interval.started
    names = sorted(interval.counts)
    local = [float(interval.loss) / interval.steps, interval.bytes / elapsed, interval.wait / elapsed]
    local += [interval.counts[n] / elapsed for n in names] + [interval.counts[n] for n in names] + [interval.bytes]
    means = distributed.mean(local, device)
    world = distributed.rank_world()[1]
    k = len(names)
    return IntervalSummary(
        loss=means[0], bytes_per_s=means[1] * world, wait_fraction=means[2],
        rates={n: v * world for n, v in zip(names, means[3:3 + k])},
        totals={**dict(zip(names, means[3 + k:3 + 2 * k])), "bytes": means[-1]})


def _log_record(task: TrainTask, step: int, interval: LogInterval, optim: OptimizerSet, device,
                meter: FlopMeter | None) -> dict:
    summary = _summarize(interval, device)
    flops = meter.record(time.perf_counter() - interval.started, interval.steps) if meter is not None else {}
    return {"step": step, "loss": summary.loss, "bits_per_byte": summary.loss / math.log(2),
            "bytes_per_s": summary.bytes_per_s, "data_wait_fraction": summary.wait_fraction, "lr": optim.lr,
            **task.record(summary), **flops}


def _checkpoint(ckpt: Checkpointer, metrics: MetricsWriter | None, step: int, model, optim: OptimizerSet,
                cfg: RunConfig, task: TrainTask, meter: FlopMeter | None) -> None:
    if metrics is not None:
        metrics.flush()
    shared = {"config": asdict(cfg)} | ({"flops": meter.state_dict()} if meter is not None else {})
    ckpt.save(step, model, optim, shared, task.rank_state())
    task.after_checkpoint(step)


def run_loop(cfg: RunConfig, task: TrainTask, model: torch.nn.Module, optim: OptimizerSet, device: torch.device,
             grad_accum: int = 1, check=None, meter: FlopMeter | None = None) -> LoopResult:
    """Train ``model`` to ``cfg.steps`` from the output's committed checkpoint (if any). ``check(shared)`` may
    refuse a checkpoint before any tensor is read. ``meter`` (fed by the task's batches) adds FLOPs and MFU to the
    records, is checkpointed, and ends the run at its FLOP budget."""
    rank, world = distributed.rank_world()
    ckpt = Checkpointer(cfg.output, cfg.checkpoint, kill_in_async_save=cfg.drills.kill_in_async_save)
    step = 0
    restored = ckpt.load(model, optim, check) if ckpt.has_checkpoint() else None
    if restored is not None:
        step = restored.step
        task.load_rank_states(restored.rank_states)
        if meter is not None:
            meter.load_state_dict(restored.shared.get("flops"))
        if rank == 0:
            log.info("resumed from step %d (written by %d workers, now %d)", step, len(restored.rank_states), world)
    metrics = MetricsWriter(cfg.output, cfg.log.metrics_flush_every) if rank == 0 else None
    interval, run_steps, last = LogInterval(), 0, {}
    model.train()
    fatal.end_setup()  # from here on an error is retried (a killed worker, a storage hiccup)
    while step < cfg.steps and not (meter is not None and meter.reached()):
        optim.zero_grad()
        for micro in range(grad_accum):
            interval.add(task.micro_step(1 / grad_accum, sync=micro == grad_accum - 1), 1 / grad_accum)
        task.clip_gradients()
        optim.step()
        step, run_steps, interval.steps = step + 1, run_steps + 1, interval.steps + 1
        budget_reached = meter is not None and meter.end_step(device)  # a collective: every rank calls it
        final = step == cfg.steps or budget_reached
        if step % cfg.log.every == 0 or final:
            record = _log_record(task, step, interval, optim, device, meter)
            if step % cfg.eval.every == 0 or final:
                record.update(task.validate())
            if metrics is not None:
                metrics.append(record)
                log.info(format_record(record))
            report(record)
            interval, last = LogInterval(), record
        if step % cfg.checkpoint.every == 0 or final:
            _checkpoint(ckpt, metrics, step, model, optim, cfg, task, meter)
        maybe_kill(step, cfg.drills.kill_at_step, cfg.output, rank, world)
        if cfg.drills.stop_after is not None and run_steps >= cfg.drills.stop_after:
            break
    ckpt.wait()
    if metrics is not None:
        metrics.close()
    return LoopResult(step, last)
