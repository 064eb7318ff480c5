"""``blt demo``: the whole flow on the bundled sample corpus, locally, ending at the dashboard.

Trains a tiny entropy model, preprocesses the sample with it on a local Ray cluster (entropies + a patch set
in Arrow, manifest), re-patches to a calibrated 4.5-byte average without the model, computes the statistics and
the dashboard, then trains a tiny BLT on the calibrated patch set with Ray Train and exports it in HF format.
One line per stage with its time; the last lines say where the dataset and run dashboards are and how to serve them.
``--verbose`` shows the stages' own logs and the Ray workers' output.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from blt_model.patching import PatchingParams
from pipeline.io import ray_runtime
from pipeline.io.logs import format_bytes, get_logger, setup_logging
from pipeline.io.storage import join
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.driver import run_preprocess
from pipeline.preprocess.repatch import RepatchConfig, run_repatch
from pipeline.stats.aggregate import compute_stats, write_stats

from .common import dataclass_parser, parse_config, run_main

SAMPLE = Path(__file__).resolve().parent.parent / "pipeline" / "sample_data" / "sample.jsonl"
log = get_logger("jobs.demo")  # [blt.demo], also when run as __main__


@dataclass
class DemoJob:
    FLAG_ALIASES: ClassVar[dict[str, str]] = {"ray": "use_ray"}

    workdir: str = "out/demo"
    inputs: str = str(SAMPLE)
    entropy_model: str | None = None  # use this entropy model checkpoint instead of training one
    steps: int = 150  # entropy model training steps
    target_avg_patch_size: float = 4.5
    train_steps: int = 40  # BLT training steps (0 to skip)
    use_ray: bool = True
    verbose: bool = False  # stage logs, progress bars and Ray worker output


CONFIG = DemoJob  # the schema: flags, help and YAML keys


def build_parser():
    return dataclass_parser(DemoJob, "blt demo", __doc__)


def show_patches(data: bytes, lengths: list[int], limit: int = 72) -> str:
    """The first ``limit`` bytes with ``|`` at patch starts, on one line."""
    pieces, pos = [], 0
    for length in lengths:
        if pos >= limit:
            break
        pieces.append(data[pos : pos + length].decode("utf-8", errors="replace"))
        pos += length
    return "|".join(pieces).replace("\n", "⏎")


def quiet(verbose: bool) -> None:
    """Only the demo's own lines: pipeline loggers at WARNING, no progress bar left behind, Ray at WARNING."""
    setup_logging()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if verbose:
        return
    logging.getLogger("blt").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    os.environ.setdefault("BLT_PROGRESS_LEAVE", "0")  # a bar while a stage runs, gone when it is done
    if not sys.stderr.isatty():
        os.environ.setdefault("BLT_PROGRESS", "0")
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch's checkpoint writer on a single process (no process group) says so on every save.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    # A notice, not a problem: a loopback cluster with ~/.ray/auth_token present runs with token auth.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def start_ray(verbose: bool) -> None:
    """A local Ray cluster on loopback whose workers' output stays in their log files unless ``verbose``."""
    ray_runtime.connect(4, quiet=not verbose)


class Stages:
    """Runs numbered stages; each logs one line with its time and summary."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = time.perf_counter()

    def run(self, name: str, fn: Callable[[], tuple[Any, str]]) -> Any:
        start = time.perf_counter()
        result, summary = fn()
        self.done += 1
        log.info("%d/%d %-13s %6.1fs  %s", self.done, self.total, name, time.perf_counter() - start, summary)
        return result


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_config(build_parser(), DemoJob, argv)

    def body() -> int:
        quiet(args.verbose)
        workdir = os.path.abspath(args.workdir)
        dataset = join(workdir, "dataset")
        use_ray = args.use_ray
        stages = Stages(3 + (args.entropy_model is None) + bool(args.train_steps) + use_ray)
        if use_ray:
            stages.run("ray", lambda: (start_ray(args.verbose), "local cluster on 127.0.0.1"))

        def entropy_model():
            # Training modules are imported here: the stages after this one do not need them.
            from training.config import EntropyTrainConfig, LogConfig
            from training.entropy_loop import run_entropy_training

            url = join(workdir, "entropy_model")
            last = run_entropy_training(EntropyTrainConfig(inputs=args.inputs, output=url, steps=args.steps,
                                                           seq_len=128, batch_size=8,
                                                           log=LogConfig(every=max(1, args.steps))),
                                        use_ray=use_ray)
            bpb = last.get("bits_per_byte")
            return url, f"{args.steps} steps, bits/byte {bpb:.3f} -> {url}" if bpb else f"{args.steps} steps -> {url}"

        model_url = args.entropy_model or stages.run("entropy model", entropy_model)

        def preprocess():
            manifest = run_preprocess(PreprocessConfig(inputs=args.inputs, output=dataset, entropy_model=model_url,
                                                       patching=PatchingParams(threshold=2.0), use_ray=use_ray,
                                                       num_workers=1))
            totals = manifest.totals()
            return manifest, (f"{totals['docs']} docs, {format_bytes(totals['bytes'])}, {totals['shards']} shard{'s' * (totals['shards'] != 1)}"
                              f" -> {dataset}")

        stages.run("preprocess", preprocess)

        def repatch():
            manifest, key = run_repatch(RepatchConfig(dataset, PatchingParams(), args.target_avg_patch_size,
                                                      set_default=True, use_ray=use_ray))
            totals = manifest.patch_sets[key].totals()
            return key, (f"threshold {manifest.patch_sets[key].params['threshold']:.4f} -> avg patch "
                         f"{totals['avg_patch_size']:.2f} bytes (target {args.target_avg_patch_size}), set {key}")

        key = stages.run("repatch", repatch)

        def stats():
            result = compute_stats(dataset, use_ray=use_ray)
            _, html_url = write_stats(dataset, result)
            sources = len(result["sources"])
            return (result, html_url), (f"{result['totals']['docs']} docs, {sources} source{'s' * (sources != 1)}, "
                                        f"mean entropy {result['totals']['mean_entropy']:.2f} nats")

        result, html_url = stages.run("stats", stats)
        example = result.get("example")
        if example and key in example["patch_lengths"]:
            log.info("example (| = patch start): %s", show_patches(bytes(example["bytes"]), example["patch_lengths"][key]))

        if args.train_steps:
            def train():
                from training.blt_loop import run_training
                from training.config import ClusterConfig, LogConfig, TrainConfig

                run = join(workdir, "blt_run")
                last = run_training(TrainConfig(dataset=dataset, output=run, steps=args.train_steps, seq_len=256,
                                                batch_size=4, log=LogConfig(every=10),
                                                cluster=ClusterConfig(num_workers=1)), use_ray=use_ray)
                return run, (f"{args.train_steps} steps, bits/byte {last.get('bits_per_byte', float('nan')):.3f}, "
                             f"{last.get('bytes_per_s', 0):.0f} bytes/s; HF export at {join(run, 'hf')}")

            run = stages.run("train BLT", train)
        log.info("done in %.1fs", time.perf_counter() - stages.started)
        print(f"dashboard: {html_url}")
        print(f"serve it:  blt dashboard {dataset} --serve   (then open http://127.0.0.1:8700/)")
        if args.train_steps:
            from training.run_dashboard import write_run_dashboard

            from .generate import sample_line

            print(f"run dashboard: {write_run_dashboard([run])}")
            print(f"serve it:  blt dashboard {run} --serve   (TensorBoard: tensorboard --logdir {run})")
            print(f"sample:    {sample_line(run)}   (blt generate {run} --prompt TEXT)")
            print(f"evaluate:  blt eval {run} --dataset {dataset}")
        return 0

    return run_main("demo", body)


if __name__ == "__main__":
    raise SystemExit(main())
