"""Run configurations (one dataclass per job; CLI flags and YAML keys are derived from them) and the LR schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from blt_model import BltConfig
from blt_model.presets import blt_preset
from pipeline.mixing import StreamConfig
from pipeline.readers import ReaderConfig


@dataclass
class CheckpointConfig:
    every: int = 50  # steps between checkpoints (and at the last step)
    keep: int = 3  # committed checkpoints kept (older ones are deleted after a new commit); 0 = keep all
    async_save: bool = False  # dcp.async_save: stage to host memory, write in the background, commit later


@dataclass
class TrainConfig:
    """BLT training on a preprocessed dataset."""

    dataset: str
    output: str  # run URL: checkpoints/, metrics, hf/, ray/ (Ray Train run state)
    patch_set: str | None = None  # params key of the patch set to train on; None = the dataset default
    preset: str = "tiny"  # tiny, small, blt-1b, blt-7b
    model_overrides: dict = field(default_factory=dict)  # BltConfig fields (HF names) over the preset
    seq_len: int = 512
    batch_size: int = 4  # per worker and micro-step
    grad_accum: int = 1  # micro-steps per optimizer step: global batch = workers x batch_size x grad_accum
    steps: int = 100
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics_flush_every: int = 10  # logged records buffered before one append (also flushed at checkpoints)
    # Which documents, in what order: shuffle, weighted mix of datasets/sources, document-level validation split.
    stream: StreamConfig = field(default_factory=StreamConfig)
    val_shards: int = 0  # hold out the last N shards (manifest order) of `dataset` for validation
    eval_every: int = 50
    eval_batches: int = 4
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_failures: int = 3  # Ray Train restarts the workers this often; each restart resumes from latest.json
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or "fp32" / "bf16"
    attn_implementation: str = "sdpa"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each transformer layer in backward
    seed: int = 0
    export_hf: bool = True
    fsdp: bool = False  # FSDP2 (fully_shard per transformer layer, built on the meta device) instead of DDP
    # Sparse gradients + SparseAdam for the hash n-gram tables (training/optim.py); DDP or one worker only.
    sparse_hash_grad: bool = False
    stop_after: int | None = None  # end this run after N steps (as if killed right after a checkpoint)
    audit_docs: bool = False  # write the ids of the documents each rank read to <output>/audit/rank-N.json
    kill_at_step: int | None = None  # recovery drill: the last rank SIGKILLs itself once at this step
    flops_budget: float | None = None  # end the run at the first step whose training FLOPs (all workers) reach this
    peak_flops: float | None = None  # per-device peak FLOP/s for `mfu`; default: GPU datasheet table or measured

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint, dict):
            self.checkpoint = CheckpointConfig(**self.checkpoint)
        if isinstance(self.stream, dict):
            self.stream = StreamConfig(**self.stream)
        if self.stream.mix and self.val_shards:
            raise ValueError("val_shards holds out shards of `dataset`; with stream.mix use "
                             "stream.validation_fraction (documents held out in every source)")
        if self.sparse_hash_grad and self.fsdp:
            raise ValueError("sparse_hash_grad works with DDP or one worker, not FSDP2 (which shards the hash "
                             "tables as dense tensors)")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")

    def model_config(self) -> BltConfig:
        return blt_preset(self.preset, attn_implementation=self.attn_implementation, **self.model_overrides)


@dataclass
class EntropyTrainConfig:
    """Entropy-model training on raw shards (streamed with the preprocessing readers)."""

    inputs: str  # fsspec URL or glob of raw shards
    output: str  # checkpoint URL: config.json + model.safetensors (what preprocessing loads), checkpoints/, metrics
    preset: str = "tiny"  # tiny, paper, hf
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    seq_len: int = 256
    batch_size: int = 8  # per worker
    steps: int = 200
    lr: float = 3e-3
    min_lr_ratio: float = 0.0
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 25
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics_flush_every: int = 10
    val_fraction: float = 0.05  # share of documents (by a hash of their id: stable) held out for validation
    eval_every: int = 100
    eval_batches: int = 4
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_failures: int = 3
    seed: int = 0
    stop_after: int | None = None
    kill_at_step: int | None = None  # recovery drill, as in TrainConfig

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint, dict):
            self.checkpoint = CheckpointConfig(**self.checkpoint)
        if isinstance(self.reader, dict):
            self.reader = ReaderConfig(**self.reader)


def lr_lambda(steps: int, warmup_steps: int, min_lr_ratio: float):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at ``steps``."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule
