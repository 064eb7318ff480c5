"""Run configurations in sections shared by both trainers (CLI flags and YAML keys are derived from them), and the
LR schedule.

``TrainConfig`` (BLT) and ``EntropyTrainConfig`` compose the same sections (``optim``, ``cluster``, ``checkpoint``,
``eval``, ``log``, ``drills``); a trainer whose defaults differ passes its own section instance as the default.
``FLAG_ALIASES`` keeps the flat spellings of earlier versions (``--lr``, ``--num-workers``, ``--val-fraction``, ...)
working as flags and YAML keys.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from blt_model import BltConfig
from blt_model.presets import blt_preset
from pipeline.ingest.readers import ReaderConfig
from pipeline.stream.mixing import StreamConfig


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decay ends at this share of the peak
    warmup_steps: int = 10  # linear warm-up steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm


@dataclass
class ClusterConfig:
    num_workers: int = 2  # Ray Train workers (one process each)
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_failures: int = 3  # Ray Train restarts the workers this often; each restart resumes from latest.json


@dataclass
class CheckpointConfig:
    every: int = 50  # steps between checkpoints (and at the last step)
    keep: int = 3  # committed checkpoints kept (older ones are deleted after a new commit); 0 = keep all
    async_save: bool = False  # dcp.async_save: stage to host memory, write in the background, commit later


@dataclass
class EvalConfig:
    every: int = 50  # steps between validations (and at the last step)
    batches: int = 4  # validation batches (per source, with a mix)
    validation_fraction: float = 0.0  # share of documents held out (a seeded hash of their id: stable)


@dataclass
class LogConfig:
    every: int = 10  # steps between logged records
    metrics_flush_every: int = 10  # logged records buffered before one append (also flushed at checkpoints)


@dataclass
class DrillConfig:
    stop_after: int | None = None  # end this run after N steps (as if killed right after a checkpoint)
    kill_at_step: int | None = None  # recovery drill: the last rank SIGKILLs itself once at this step
    kill_in_async_save: int | None = None  # drill: rank 0 SIGKILLs itself once inside step N's async save's write


DEFAULT_SAMPLE_PROMPTS = ("The ", "def main(", "Once upon a time")


@dataclass
class SampleConfig:
    """Greedy continuations rank 0 writes at each checkpoint (``samples/step-N.json``, on the run dashboard)."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_SAMPLE_PROMPTS))  # fixed prompts (an empty list: off)
    max_new_bytes: int = 48  # bytes generated per prompt (0: no samples)

    def __post_init__(self) -> None:
        if self.max_new_bytes < 0:
            raise ValueError("samples.max_new_bytes must be >= 0")
        if any(not p for p in self.prompts):
            raise ValueError("a sample prompt is empty (generation needs at least one byte)")

    @property
    def enabled(self) -> bool:
        return bool(self.prompts) and self.max_new_bytes > 0


def _flat(section: str, cls: type) -> dict[str, str]:
    return {f.name: f"{section}.{f.name}" for f in dataclasses.fields(cls)}


# Flat names of earlier versions -> their section field; both trainers accept them as flags and YAML keys.
FLAT_ALIASES = {
    **_flat("optim", OptimConfig), **_flat("cluster", ClusterConfig), **_flat("drills", DrillConfig),
    "log_every": "log.every", "metrics_flush_every": "log.metrics_flush_every",
    "eval_every": "eval.every", "eval_batches": "eval.batches",
}


def coerce_sections(config: object) -> None:
    """Turn section fields given as dicts (YAML, ``asdict`` round trips to the workers) into their dataclasses."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[f.name]):
            setattr(config, f.name, hints[f.name](**value))


@dataclass
class TrainConfig:
    """BLT training on a preprocessed dataset."""

    FLAG_ALIASES: ClassVar[dict[str, str]] = {**FLAT_ALIASES, "stream.validation_fraction": "eval.validation_fraction"}

    dataset: str
    output: str  # run URL: checkpoints/, metrics, hf/, ray/ (Ray Train run state)
    patch_set: str | None = None  # params key of the patch set to train on; None = the dataset default
    preset: str = "tiny"  # tiny, small, blt-1b, blt-7b
    model_overrides: dict = field(default_factory=dict)  # BltConfig fields (HF names) over the preset
    seq_len: int = 512
    batch_size: int = 4  # per worker and micro-step
    grad_accum: int = 1  # micro-steps per optimizer step: global batch = workers x batch_size x grad_accum
    steps: int = 100
    optim: OptimConfig = field(default_factory=OptimConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    drills: DrillConfig = field(default_factory=DrillConfig)
    # Which documents, in what order: shuffle, weighted mix of datasets/sources. Its validation_fraction is
    # eval.validation_fraction (one name; copied here for the loader).
    stream: StreamConfig = field(default_factory=StreamConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    val_shards: int = 0  # hold out the last N shards (manifest order) of `dataset` for validation
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or "fp32" / "bf16"
    attn_implementation: str = "sdpa"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each transformer layer in backward
    seed: int = 0
    export_hf: bool = True
    fsdp: bool = False  # FSDP2 (fully_shard per transformer layer, built on the meta device) instead of DDP
    # Sparse gradients + SparseAdam for the hash n-gram tables (training/optim.py); DDP or one worker only.
    sparse_hash_grad: bool = False
    audit_docs: bool = False  # write the ids of the documents each rank read to <output>/audit/rank-N.json
    flops_budget: float | None = None  # end the run at the first step whose training FLOPs (all workers) reach this
    peak_flops: float | None = None  # per-device peak FLOP/s for `mfu`; default: GPU datasheet table or measured

    def __post_init__(self) -> None:
        coerce_sections(self)
        if self.stream.validation_fraction and not self.eval.validation_fraction:
            self.eval.validation_fraction = self.stream.validation_fraction
        self.stream.validation_fraction = self.eval.validation_fraction
        if self.stream.mix and self.val_shards:
            raise ValueError("val_shards holds out shards of `dataset`; with stream.mix use "
                             "eval.validation_fraction (documents held out in every source)")
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

    FLAG_ALIASES: ClassVar[dict[str, str]] = {**FLAT_ALIASES, "val_fraction": "eval.validation_fraction"}

    inputs: str  # fsspec URL or glob of raw shards
    output: str  # checkpoint URL: config.json + model.safetensors (what preprocessing loads), checkpoints/, metrics
    preset: str = "tiny"  # tiny, paper, hf
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    seq_len: int = 256
    batch_size: int = 8  # per worker
    steps: int = 200
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(min_lr_ratio=0.0, warmup_steps=20, weight_decay=0.01))
    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig(num_workers=1))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=100, validation_fraction=0.05))
    log: LogConfig = field(default_factory=lambda: LogConfig(every=25))
    drills: DrillConfig = field(default_factory=DrillConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_sections(self)


def lr_lambda(steps: int, warmup_steps: int, min_lr_ratio: float):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at ``steps``."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule
