"""What ``blt preprocess`` runs with: the job's schema (its flags and YAML keys derive from it) and what the driver
and every worker read."""

from __future__ import annotations

from dataclasses import dataclass, field

from blt_model.patching import PatchingParams
from pipeline.ingest.readers import ReaderConfig


@dataclass
class PreprocessConfig:
    inputs: str
    output: str
    entropy_model: str
    patching: PatchingParams = field(default_factory=PatchingParams)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    # Bytes scored per model call (per lane on GPU), documents packed end to end. 4096 reached 0.80 of the CPU
    # fp32 matmul peak against 0.74 for 16384 on an idle machine (bench/entropy.py --spans 4096,16384); GPUs
    # batch lanes of it (64K tokens per call).
    span: int = 4096  # bytes per entropy-model call (documents packed end to end)
    context: int | None = None  # left context re-read per span; None = the model's receptive field (exact)
    batch_bytes: int = 1 << 20  # documents gathered per scoring call / Arrow record batch
    # Document batches a reader thread reads, decompresses and parses ahead of scoring (memory: about this many
    # times batch_bytes); 0 = read and score one after the other in one thread.
    read_ahead: int = 2
    unit_bytes: int = 256 << 20  # larger parquet / uncompressed jsonl, txt-line objects become several work units
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    strict: bool = False
    use_ray: bool = True

    def __post_init__(self) -> None:
        if self.read_ahead < 0:
            raise ValueError("read_ahead must be >= 0 (0: no reader thread)")
