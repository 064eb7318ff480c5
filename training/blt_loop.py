"""The BLT trainer: the model-specific parts (``BltTask``) run by the shared loop (``training.loop``).

Every worker streams its own part of the dataset through ``PatchedWindowLoader``; a resumed run (after a restart
or a re-run of the same command) replays exactly the batches and, within float tolerance, the loss curve of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import time

import torch

from blt_model import ByteLatentTransformer
from pipeline.dataset.manifest import Manifest
from pipeline.io.logs import get_logger
from pipeline.io.storage import join, write_bytes_atomic
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader

from . import distributed
from .config import TrainConfig, lr_lambda
from .evaluate import held_out_shards_result, training_validation
from .export import export_trained, full_model
from .flops import FlopMeter, device_peak_flops
from .loop import IntervalSummary, MicroStep, run_loop, run_workers, start_worker
from .model_source import record_run_patching
from .optim import HASH_TABLE_PARAM, OptimizerSet, build_optimizers, reduce_and_clip
from .parallelize import (
    apply_activation_checkpointing,
    build_on_meta,
    fully_shard_model,
    materialize,
    no_sync,
    wrap_ddp,
)
from .samples import CheckpointSampler

log = get_logger("train")


def split_shards(manifest: Manifest, val_shards: int) -> tuple[list[str], list[str]]:
    urls = sorted(manifest.shards)
    if val_shards >= len(urls):
        raise ValueError(f"val_shards={val_shards} leaves no training shards ({len(urls)} in total)")
    cut = len(urls) - val_shards
    return urls[:cut], urls[cut:]


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
    optimizers = build_optimizers(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.sparse_hash_grad)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 and not fsdp_bf16
                else contextlib.nullcontext)
    return model, train_model, optimizers, autocast


class BltTask:
    """The BLT's batches (patched windows), loss, clipping, validation and record fields."""

    def __init__(self, cfg: TrainConfig, model, train_model, autocast, device: torch.device,
                 meter: FlopMeter) -> None:
        self.cfg, self.model, self.train_model, self.autocast, self.device = cfg, model, train_model, autocast, device
        self.meter = meter
        self.rank, self.world = distributed.rank_world()
        train_urls, self.val_urls = split_shards(Manifest.load(cfg.dataset), cfg.val_shards)
        self.loader = PatchedWindowLoader(LoaderConfig(
            cfg.dataset, cfg.patch_set, cfg.seq_len, cfg.batch_size, self.rank, self.world,
            shards=None if cfg.stream.mix else train_urls, stream=cfg.stream))
        self.batches = None
        self.seen_docs: list[str] = []
        run = None
        if self.rank == 0:  # the rule generate/export read back
            run = record_run_patching(cfg.output, cfg.dataset, self.loader.patch_set)
        self.sampler = CheckpointSampler(cfg.samples, cfg.output, run, device)

    def micro_step(self, scale: float, sync: bool) -> MicroStep:
        if self.batches is None:
            self.batches = iter(self.loader)
        wait_started = time.perf_counter()
        batch = next(self.batches)
        wait = time.perf_counter() - wait_started
        tokens, labels = batch.tokens.to(self.device), batch.labels.to(self.device)
        with no_sync(self.train_model, self.model, sync=sync):
            with self.autocast():
                loss = self.train_model(tokens, batch.patch_lengths.to(self.device), labels).loss
            (loss * scale).backward()
        self.meter.batch(tokens.shape, batch.patch_lengths.shape[1])
        if self.cfg.audit_docs:
            self.seen_docs.extend(batch.doc_ids)
        return MicroStep(loss.detach(), tokens.numel(), wait,
                         {"patches": batch.num_patches, "sequences": tokens.shape[0]})

    def clip_gradients(self) -> None:
        reduce_and_clip(self.model, self.cfg.optim.grad_clip, self.world, self.cfg.sparse_hash_grad)

    def record(self, summary: IntervalSummary) -> dict:
        cfg, totals = self.cfg, summary.totals
        return {
            "patches_per_s": summary.rates["patches"],
            "bytes_per_patch": totals["bytes"] / max(totals["patches"], 1e-9),
            "patches_per_sequence": totals["patches"] / max(totals["sequences"], 1e-9),
            "global_batch": self.world * cfg.batch_size * cfg.grad_accum,
            "epoch": self.loader.state_dict().get("epoch", 0),
            **{f"mix_share/{name}": s["share"] for name, s in self.loader.mix_stats().items()},
        }

    def validate(self) -> dict[str, float]:
        """Bits per byte on the held-out shards and/or the held-out documents of every source, documents scored
        whole by ``training.scoring`` (the numbers ``blt eval`` gives on the same documents), at most
        ``eval.batches`` batches of windows per source; the same on every rank."""
        cfg, out = self.cfg, {}
        if self.val_urls:
            result = held_out_shards_result(self.model, cfg, self.val_urls, self.autocast)
            out["val_bits_per_byte"] = result.overall.bits_per_byte
        if cfg.eval.validation_fraction > 0:
            out.update(training_validation(self.model, cfg, self.loader, self.autocast))
        return out

    def rank_state(self) -> dict:
        return {"loader": self.loader.state_dict()}

    def load_rank_states(self, states: list[dict]) -> None:
        self.loader.load_state_dicts([s["loader"] for s in states])

    def after_checkpoint(self, step: int) -> None:
        """Rank 0 writes greedy samples of the checkpoint's weights (``samples/step-N.json``)."""
        if not self.cfg.samples.enabled:  # the same on every rank (the gather below is a collective)
            return
        model = self.model
        if self.cfg.fsdp:  # sharded parameters: every rank takes part in gathering them
            model = full_model(self.model, self.cfg.model_config(), self.rank)
            model = None if model is None else model.to(self.device)
        if self.rank == 0:
            self.sampler.write(step, model)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker (or in-process)."""
    cfg = TrainConfig(**config)
    rank, world, device = start_worker(cfg)
    model, train_model, optimizers, autocast = build(cfg, device, world)
    meter = FlopMeter(cfg.model_config(), device_peak_flops(device, use_bf16(cfg, device), cfg.peak_flops),
                      cfg.flops_budget)
    schedule = meter.lr_schedule(lr_lambda(cfg.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio), cfg.steps)
    optim = OptimizerSet(optimizers, schedule)
    task = BltTask(cfg, model, train_model, autocast, device, meter)

    def check(shared: dict) -> None:
        if shared["config"].get("sparse_hash_grad", False) != cfg.sparse_hash_grad:
            raise ValueError(f"checkpoint was written with sparse_hash_grad={not cfg.sparse_hash_grad}, this run "
                             f"has {cfg.sparse_hash_grad}: their optimizers differ; resume with the same setting")

    if rank == 0:
        log.info("global batch %d sequences = %d workers x %d x %d accumulation, %d bytes each",
                 world * cfg.batch_size * cfg.grad_accum, world, cfg.batch_size, cfg.grad_accum, cfg.seq_len)
    result = run_loop(cfg, task, model, optim, device, cfg.grad_accum, check, meter)
    if cfg.audit_docs:
        write_bytes_atomic(join(cfg.output, "audit", f"rank-{rank:05d}.json"), json.dumps(task.seen_docs).encode())
    if (result.step >= cfg.steps or meter.reached()) and cfg.export_hf:
        export_trained(model, cfg.model_config(), cfg.output, rank)


def run_training(cfg: TrainConfig, use_ray: bool = True) -> dict:
    """Launch the workers (restarted automatically up to ``max_failures`` times); returns the last metrics record."""
    if cfg.seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    Manifest.load(cfg.dataset)  # fail early, in the driver, on a missing dataset
    return run_workers(train_loop, cfg, "blt-train", use_ray)
