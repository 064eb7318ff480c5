"""``blt study``: patching schemes compared at equal training FLOPs, in held-out bits per byte.

One entropy model (trained here or given), one preprocessing pass, then one patch set per arm -- static at each
size k, entropy calibrated to each k, space, and entropy calibrated to space's average -- and one BLT per arm
trained until its training FLOPs reach the same budget (``TrainConfig.flops_budget``). Every arm is validated on
the same held-out documents (``stream.validation_fraction``: by a hash of the document id, so identical across
arms) of every source; the curve of held-out bits/byte against training FLOPs of each arm goes to ``study.json``,
``study.md`` and a self-contained ``study.html`` (inline SVG).
"""

from __future__ import annotations

import itertools
import json
import math
import posixpath
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from blt_model.patching import PatchingParams
from pipeline.dataset.manifest import Manifest, PatchSetRecord
from pipeline.dataset.model_store import read_checkpoint
from pipeline.io.logs import get_logger, setup_logging
from pipeline.io.storage import exists, join, write_bytes_atomic
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch
from pipeline.stream.loader import LoaderConfig, PatchedWindowLoader
from pipeline.stream.mixing import SourceSpec, StreamConfig, matches

from .blt_loop import run_training
from .config import (
    CheckpointConfig,
    ClusterConfig,
    EntropyTrainConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    TrainConfig,
)
from .entropy_loop import run_entropy_training
from .fatal import one_line
from .flops import blt_step_flops, entropy_flops_per_byte
from .metrics import read_metrics
from .study_report import write_reports

log = get_logger(__name__)


@dataclass
class StudySize:
    """One preset of the study: entropy model, BLT shape (paper proportions: the global transformer carries most
    of the FLOPs, the local models are small), batch shape and the FLOP budget of every arm."""

    entropy_preset: str
    entropy_steps: int
    entropy_seq_len: int
    entropy_batch_size: int
    blt: dict  # BltConfig overrides over the `tiny` preset
    seq_len: int
    batch_size: int
    flops_budget: float  # training FLOPs per arm
    points: int  # validations along each arm's curve
    eval_batches: int  # per source and validation
    lr: float = 3e-3
    num_workers: int = 1
    use_gpu: bool = False


def _blt(local: int, local_heads: int, dec_layers: int, glob: int, glob_heads: int, glob_layers: int,
         window: int, hash_vocab: int) -> dict:
    return dict(
        encoder_hash_byte_group_vocab=hash_vocab, local_attention_window_len=window, cross_attn_k=2,
        encoder_config=dict(hidden_size=local, num_attention_heads=local_heads, num_hidden_layers=1,
                            intermediate_size=2 * local),
        decoder_config=dict(hidden_size=local, num_attention_heads=local_heads, num_hidden_layers=dec_layers,
                            intermediate_size=2 * local),
        global_config=dict(hidden_size=glob, num_attention_heads=glob_heads, num_hidden_layers=glob_layers,
                           intermediate_size=int(8 * glob / 3) // 32 * 32),
    )


SIZES: dict[str, StudySize] = {
    # A couple of minutes on a CPU: proves the pipeline, not the claim.
    "ci": StudySize("tiny", 60, 128, 8, _blt(32, 2, 1, 128, 4, 2, 64, 4099), seq_len=128, batch_size=2,
                    flops_budget=2.5e10, points=2, eval_batches=2),
    # About 30 minutes on 2 free CPU cores at ~10 GFLOP/s effective: a 1,000-step entropy model (~4 min), 8 MB
    # preprocessed (~3 min), 8 arms of 2e12 training FLOPs (~3.5 min, 130-220 steps of 4 x 512 bytes each). The
    # global transformer (256 x 4) carries 67-80% of the forward FLOPs at 8-4 bytes per patch.
    "cpu": StudySize("tiny", 1000, 256, 16, _blt(64, 4, 2, 256, 4, 4, 128, 16381), seq_len=512, batch_size=4,
                     flops_budget=2e12, points=6, eval_batches=8),
    # One GPU, about an hour: the paper's 14-layer entropy model, global 768 x 8.
    "gpu": StudySize("paper", 20000, 512, 64, _blt(256, 4, 4, 768, 12, 8, 512, 100003), seq_len=2048,
                     batch_size=64, flops_budget=2e17, points=8, eval_batches=16, lr=1e-3, use_gpu=True),
    # A GPU node: global 2048 x 25 (the BLT-1B global model), locals 512 wide.
    "gpu-1b": StudySize("paper", 50000, 512, 64, _blt(512, 8, 6, 2048, 16, 25, 512, 500002), seq_len=4096,
                        batch_size=8, flops_budget=2e19, points=10, eval_batches=32, lr=4e-4, num_workers=8,
                        use_gpu=True),
}


@dataclass
class StudyConfig:
    """A FLOP-matched comparison of patching schemes."""

    output: str  # study URL: entropy_model/, dataset/, arms/<arm>/, study.json, study.md, study.html
    inputs: str | None = None  # raw shards (fsspec URL or glob); not needed with `dataset`
    dataset: str | None = None  # an existing preprocessed dataset (skips entropy model and preprocessing)
    entropy_model: str | None = None  # an existing entropy model (skips its training)
    size: str = "ci"  # ci, cpu, gpu, gpu-1b
    patch_sizes: list[float] = field(default_factory=lambda: [4.5, 6.0, 8.0])  # k of the static/entropy arms
    flops_budget: float | None = None  # training FLOPs per arm; default: the size's
    validation_fraction: float = 0.05  # documents held out (by id hash) in every source
    sources: list[str] = field(default_factory=list)  # NAME=PATTERN input-url groups; default: one per directory
    seed: int = 0
    max_parallel_arms: int | None = None  # arms trained at once on Ray; default: as many as the cluster holds
    use_ray: bool = True  # run every stage on the Ray cluster (--no-ray: in this process)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}: choose from {sorted(SIZES)}")
        if self.inputs is None and self.dataset is None:
            raise ValueError("give --inputs (raw shards) or --dataset (a preprocessed dataset)")
        if not self.patch_sizes or any(k < 1 for k in self.patch_sizes):
            raise ValueError("patch_sizes must be >= 1 bytes")
        if self.max_parallel_arms is not None and self.max_parallel_arms < 1:
            raise ValueError("max_parallel_arms must be >= 1")


@dataclass
class Arm:
    name: str
    params: PatchingParams
    target: float | None = None  # calibrate the threshold to this average patch size
    target_from: str | None = None  # ... or to the achieved average of this arm


def plan_arms(patch_sizes: list[float]) -> list[Arm]:
    """Static and calibrated entropy at every k, space, and entropy at space's average."""
    arms = []
    for k in patch_sizes:
        static = max(1, round(k))
        arms.append(Arm(f"static-{static}", PatchingParams(mode="static", patch_size=static)))
        arms.append(Arm(f"entropy-{k:g}", PatchingParams(mode="entropy"), target=k))
    arms.append(Arm("space", PatchingParams(mode="space")))
    arms.append(Arm("entropy-space", PatchingParams(mode="entropy"), target_from="space"))
    unique = {a.name: a for a in arms}  # k = 4 and 4.4 share static-4
    return list(unique.values())


def source_specs(dataset: str, key: str, patterns: list[str]) -> list[SourceSpec]:
    """One mixing source per NAME=PATTERN (or per input directory), weighted by its bytes, all on patch set
    ``key``: validation then reports bits/byte per source."""
    manifest = Manifest.load(dataset)
    if patterns:
        groups = {}
        for item in patterns:
            name, sep, pattern = item.partition("=")
            if not sep:
                raise ValueError(f"source {item!r}: expected NAME=PATTERN")
            groups[name] = [pattern]
    else:
        dirs = sorted({posixpath.dirname(url) for url in manifest.shards})
        groups = {posixpath.basename(d) or d: [d.rstrip("/") + "/"] for d in dirs}
    sizes = defaultdict(int)
    for url, record in manifest.shards.items():
        for name, pats in groups.items():
            if any(matches(url, p) for p in pats):
                sizes[name] += record.bytes
                break
    return [SourceSpec(dataset, weight=max(sizes[name], 1), include=pats, patch_set=key, name=name)
            for name, pats in groups.items() if sizes[name]]


def _mean_step_flops(cfg: TrainConfig, batches: int = 16) -> float:
    """Training FLOPs of one step on this arm's data: the padded patch width varies with the patching, so it is
    read from the arm's own first batches (no model involved)."""
    model_cfg = cfg.model_config()
    loader = PatchedWindowLoader(LoaderConfig(cfg.dataset, cfg.patch_set, cfg.seq_len, cfg.batch_size,
                                              stream=cfg.stream, prefetch=1))
    with loader:
        flops = [blt_step_flops(model_cfg, *b.tokens.shape, b.patch_lengths.shape[1]).train
                 for b in itertools.islice(iter(loader), batches)]
    return sum(flops) / len(flops) * cfg.grad_accum * cfg.cluster.num_workers


def _entropy_model(cfg: StudyConfig, size: StudySize, use_ray: bool) -> tuple[str, dict]:
    if cfg.entropy_model:
        return cfg.entropy_model, {}
    url = join(cfg.output, "entropy_model")
    if not exists(join(url, "model.safetensors")):
        run_entropy_training(EntropyTrainConfig(
            inputs=cfg.inputs, output=url, preset=size.entropy_preset, seq_len=size.entropy_seq_len,
            batch_size=size.entropy_batch_size, steps=size.entropy_steps,
            log=LogConfig(every=max(1, size.entropy_steps // 10)),
            eval=EvalConfig(every=max(1, size.entropy_steps // 10), validation_fraction=0.05),
            cluster=ClusterConfig(num_workers=1, use_gpu=size.use_gpu), seed=cfg.seed), use_ray=use_ray)
    curve = [{"step": r["step"], "val_bits_per_byte": r["val_bits_per_byte"]}
             for r in read_metrics(url) if "val_bits_per_byte" in r]
    return url, {"steps": size.entropy_steps, "val_curve": curve}


def run_study(cfg: StudyConfig) -> dict:
    use_ray = cfg.use_ray
    size = SIZES[cfg.size]
    budget = cfg.flops_budget or size.flops_budget
    entropy = {}
    if cfg.dataset:
        dataset = cfg.dataset
        manifest = Manifest.load(dataset)
        if not manifest.shards:
            raise FileNotFoundError(f"{dataset}: no preprocessed shards")
    else:
        model_url, entropy = _entropy_model(cfg, size, use_ray)
        dataset = join(cfg.output, "dataset")
        log.info("preprocessing %s with %s", cfg.inputs, model_url)
        manifest = run_preprocess(PreprocessConfig(inputs=cfg.inputs, output=dataset, entropy_model=model_url,
                                                   use_ray=use_ray, num_workers=1))
        model_cfg = read_checkpoint(model_url).config
        dense, attention = entropy_flops_per_byte(model_cfg)
        entropy.update(url=model_url, flops_per_byte=dense + attention,
                       preprocessing_flops=(dense + attention) * manifest.totals()["bytes"])
    runs = plan_training(cfg, size, dataset, budget)
    timings = train_arms(runs, use_ray, cfg.max_parallel_arms)
    results = [_arm_result(run, read_metrics(run.train.output)) | asdict(timing)
               for run, timing in zip(runs, timings)]
    study = {
        "size": cfg.size, "flops_budget": budget, "config": asdict(cfg), "size_config": asdict(size),
        "entropy_model": entropy, "dataset": dataset, "arms": results,
    }
    write_bytes_atomic(join(cfg.output, "study.json"), json.dumps(study, indent=1).encode())
    write_reports(study, cfg.output)
    return study


@dataclass
class ArmRun:
    """One arm ready to train: its patch set (written) and its training config."""

    arm: Arm
    key: str
    record: PatchSetRecord
    train: TrainConfig


@dataclass
class ArmTiming:
    """When an arm's training ran (UTC, ISO 8601): shows which arms shared the cluster."""

    started: str
    ended: str
    train_seconds: float


class ArmFailed(RuntimeError):
    """An arm's training failed; the message names the arm and its error in one line."""

    def __init__(self, name: str, cause: BaseException):
        cause = getattr(cause, "cause", None) or cause  # a RayTaskError carries the arm's own exception
        super().__init__(f"arm {name}: {one_line(cause)}")


def plan_training(cfg: StudyConfig, size: StudySize, dataset: str, budget: float) -> list[ArmRun]:
    """Write every arm's patch set and build its training config, in the arms' order: entropy-space's target is
    space's achieved average, so this stays sequential (it is cheap next to training)."""
    achieved, runs = {}, []
    for arm in plan_arms(cfg.patch_sizes):
        target = achieved[arm.target_from] if arm.target_from else arm.target
        manifest, key = run_repatch(RepatchConfig(dataset, arm.params, target, use_ray=cfg.use_ray))
        record = manifest.patch_sets[key]
        achieved[arm.name] = record.totals()["avg_patch_size"]
        train = TrainConfig(
            dataset=dataset, output=join(cfg.output, "arms", arm.name), patch_set=key, preset="tiny",
            model_overrides=size.blt, seq_len=size.seq_len, batch_size=size.batch_size,
            optim=OptimConfig(lr=size.lr, warmup_steps=1), steps=1, flops_budget=budget,
            cluster=ClusterConfig(num_workers=size.num_workers, use_gpu=size.use_gpu), export_hf=False,
            seed=cfg.seed, log=LogConfig(every=1, metrics_flush_every=50),
            checkpoint=CheckpointConfig(every=10**9, keep=1),
            eval=EvalConfig(validation_fraction=cfg.validation_fraction),
            stream=StreamConfig(mix=source_specs(dataset, key, cfg.sources), seed=cfg.seed))
        # The budget ends the run and drives the LR schedule (FlopMeter.lr_schedule); `steps` only sizes the
        # schedule's units and caps the run far beyond the steps this arm's FLOPs per step afford.
        per_step = _mean_step_flops(train)
        expected = max(2, math.ceil(budget / per_step))  # an estimate: padding varies
        train.steps = 3 * expected
        train.optim.warmup_steps = max(1, train.steps // 20)
        train.log.every = max(1, expected // 50)
        train.eval.every = max(1, expected // size.points // train.log.every) * train.log.every  # on a logged step
        train.eval.batches = size.eval_batches
        log.info("arm %s: patch set %s, %.2f bytes/patch, ~%.3g FLOPs/step, ~%d steps", arm.name, key,
                 achieved[arm.name], per_step, expected)
        runs.append(ArmRun(arm, key, record, train))
    return runs


def arm_room(cluster: ClusterConfig, resources: dict[str, float]) -> int:
    """How many arms' worker groups the cluster's CPUs (and GPUs, for GPU arms) hold at once; at least 1."""
    fits = [resources.get("CPU", 0.0) // (cluster.num_workers * cluster.cpus_per_worker)]
    if cluster.use_gpu:
        fits.append(resources.get("GPU", 0.0) // cluster.num_workers)
    return max(1, int(min(fits)))


def _train_arm(train: TrainConfig, use_ray: bool) -> ArmTiming:
    """One arm's training, timed. With Ray it runs in its own task, so each arm's Ray Train controller lives
    outside the driver."""
    setup_logging()
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    run_training(train, use_ray=use_ray)
    return ArmTiming(started.isoformat(timespec="milliseconds"),
                     datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                     round(time.perf_counter() - clock, 3))


def train_arms(runs: list[ArmRun], use_ray: bool, max_parallel: int | None = None) -> list[ArmTiming]:
    """Train every arm; timings in the arms' order. Without Ray: one after another in this process. With Ray:
    each arm in a Ray task (holding no CPU itself; its Ray Train run reserves its workers), as many at once as
    the cluster has room for (capped by ``max_parallel``), the next starting as one finishes. When an arm fails,
    no further arm starts, the arms in flight run to their end (their work is kept under their outputs rather
    than killed half-way), then the first failure is raised as ``ArmFailed``."""
    if not use_ray:
        timings = []
        for run in runs:
            try:
                timings.append(_train_arm(run.train, use_ray=False))
            except Exception as exc:
                raise ArmFailed(run.arm.name, exc) from exc
        return timings
    if not runs:
        return []
    import ray

    resources = ray.cluster_resources()
    fits = arm_room(runs[0].train.cluster, resources)
    room = min(fits, max_parallel or fits, len(runs))
    where = f"{resources.get('CPU', 0):g} CPUs" + (f", {resources.get('GPU', 0):g} GPUs"
                                                   if runs[0].train.cluster.use_gpu else "")
    where += f"; at most {max_parallel} by --max-parallel-arms" if max_parallel and max_parallel < fits else ""
    # No task retries (Ray Train restarts its workers itself); one arm per worker process, so no arm inherits a
    # process whose earlier Ray Train controller has ended.
    remote = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(_train_arm)
    timings: list[ArmTiming | None] = [None] * len(runs)
    in_flight: dict = {}  # ObjectRef -> arm index
    queue = list(range(len(runs)))
    failure: ArmFailed | None = None
    while in_flight or (queue and failure is None):
        started = []
        while queue and failure is None and len(in_flight) < room:
            i = queue.pop(0)
            in_flight[remote.remote(runs[i].train, True)] = i
            started.append(i)
        if started:
            log.info("training arms %s at once (room for %d of %d on %s)",
                     ", ".join(runs[i].arm.name for i in sorted(in_flight.values())), min(fits, len(runs)), len(runs),
                     where)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        i = in_flight.pop(done[0])
        try:
            timings[i] = ray.get(done[0])
            log.info("arm %s trained in %.1f s", runs[i].arm.name, timings[i].train_seconds)
        except Exception as exc:
            error = ArmFailed(runs[i].arm.name, exc)
            log.error("%s%s", error, f"; waiting for {len(in_flight)} arm(s) in flight" if in_flight else "")
            failure = failure or error
    if failure is not None:
        raise failure
    return timings


def _arm_result(run: ArmRun, metrics: list[dict]) -> dict:
    arm, key, record, train = run.arm, run.key, run.record, run.train
    curve = [{"step": r["step"], "flops_total": r["flops_total"],
              **{k: v for k, v in r.items() if k.startswith("val_bits_per_byte")}}
             for r in metrics if "val_bits_per_byte" in r]
    last = metrics[-1] if metrics else {}
    return {
        "name": arm.name, "patch_set": key, "params": arm.params.to_dict() | {"threshold": record.params.get(
            "threshold")}, "calibration": record.calibration, "bytes_per_patch": record.totals()["avg_patch_size"],
        "steps": last.get("step", 0), "flops_total": last.get("flops_total", 0.0),
        "flops_per_byte": sum(r.get("flops_per_byte", 0.0) for r in metrics) / max(len(metrics), 1),
        "mfu": sum(r.get("mfu", 0.0) for r in metrics) / max(len(metrics), 1),
        "train_bits_per_byte": last.get("bits_per_byte"), "curve": curve,
        "final": curve[-1] if curve else {}, "output": train.output,
    }
