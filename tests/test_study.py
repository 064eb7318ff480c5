"""``blt study --size ci --no-ray`` end to end on real text: entropy model, preprocessing, every arm trained to
the same FLOP budget, validated on the same held-out documents per source; study.json, study.md, study.html."""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pytest
from corpus import write_real_text

from blt_model.patching import PatchingParams
from jobs.study import main
from training.config import ClusterConfig, EvalConfig, LogConfig, SampleConfig, TrainConfig
from training.metrics import read_metrics
from training.study import SIZES, Arm, ArmFailed, ArmRun, arm_room, plan_arms, train_arms

CI_ARGS = ["--size", "ci", "--patch-sizes", "[4]", "--validation-fraction", "0.25"]

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_arms_cover_static_entropy_and_space():
    names = [a.name for a in plan_arms([4.5, 6.0, 8.0])]
    assert names == ["static-4", "entropy-4.5", "static-6", "entropy-6", "static-8", "entropy-8", "space",
                     "entropy-space"]


@dataclass
class Run:
    out: Path
    printed: dict


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Run:
    """``blt study --size ci --no-ray`` from raw text, once per module: the Ray test reuses its dataset."""
    root = tmp_path_factory.mktemp("study")
    raw = root / "raw"
    write_real_text(str(raw), code_bytes=60_000, prose_bytes=60_000)
    out = root / "sequential"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--output", str(out), "--inputs", f"{raw}/*/*.jsonl", *CI_ARGS, "--no-ray"]) == 0
    return Run(out, json.loads(stdout.getvalue().strip().splitlines()[-1]))


def _window(arm: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(arm["started"]), datetime.fromisoformat(arm["ended"])


def test_study_ci_end_to_end(sequential):
    out = sequential.out
    study = json.loads((out / "study.json").read_text())
    arms = {a["name"]: a for a in study["arms"]}
    assert sorted(arms) == ["entropy-4", "entropy-space", "space", "static-4"]
    budget = study["flops_budget"]
    totals = [a["flops_total"] for a in arms.values()]
    # The budget ends every arm, within one step of it.
    assert all(budget <= t < 1.02 * budget for t in totals), {n: (a["steps"], a["flops_total"] / budget)
                                                              for n, a in arms.items()}
    assert max(totals) / min(totals) < 1.02
    # Calibrated entropy arms land on their targets; entropy-space on space's average.
    assert arms["entropy-4"]["bytes_per_patch"] == pytest.approx(4.0, rel=0.05)
    assert arms["entropy-space"]["bytes_per_patch"] == pytest.approx(arms["space"]["bytes_per_patch"], rel=0.05)
    # Fewer bytes per patch cost more FLOPs per byte.
    assert arms["static-4"]["flops_per_byte"] > arms["space"]["flops_per_byte"]
    for arm in arms.values():
        final = arm["final"]
        assert set(final) >= {"val_bits_per_byte", "val_bits_per_byte/code", "val_bits_per_byte/prose"}
        assert 0.5 < final["val_bits_per_byte"] < 8.5
        assert len(arm["curve"]) >= 2 and arm["curve"][-1]["flops_total"] == arm["flops_total"]
        assert arm["mfu"] > 0
    entropy = study["entropy_model"]
    assert entropy["flops_per_byte"] > 0 and entropy["val_curve"]
    table = (out / "study.md").read_text()
    assert all(f"| {name} |" in table for name in arms) and "code" in table and "prose" in table
    page = (out / "study.html").read_text()
    assert page.count("<polyline") == len(arms) and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"',
                                                                               "")
    assert set(sequential.printed["arms"]) == set(arms)
    # In process the arms run one after another.
    windows = [_window(a) for a in study["arms"]]
    assert all(ended <= next_start for (_, ended), (next_start, _) in zip(windows, windows[1:]))


@pytest.mark.timeout(600)
def test_study_arms_train_at_once_on_ray(sequential, ray_cluster, tmp_path):
    """On the 8-CPU test cluster the four one-worker arms train at the same time, and the study's results keep
    the sequential contract: the arms' order, the same patch sets, every arm at the budget."""
    out = tmp_path / "parallel"
    began = time.perf_counter()
    assert main(["--output", str(out), "--dataset", str(sequential.out / "dataset"), *CI_ARGS]) == 0
    wall = time.perf_counter() - began
    study = json.loads((out / "study.json").read_text())
    reference = json.loads((sequential.out / "study.json").read_text())
    assert [a["name"] for a in study["arms"]] == [a["name"] for a in reference["arms"]]
    budget = study["flops_budget"]
    for arm, ref in zip(study["arms"], reference["arms"]):
        assert set(arm) == set(ref) and set(arm["final"]) == set(ref["final"])
        assert arm["patch_set"] == ref["patch_set"]
        assert arm["bytes_per_patch"] == pytest.approx(ref["bytes_per_patch"])
        assert budget <= arm["flops_total"] < 1.02 * budget
        # Same seed, data and single worker: the same run as in process (measured: equal to 1e-8).
        assert arm["steps"] == ref["steps"]
        assert arm["final"]["val_bits_per_byte"] == pytest.approx(ref["final"]["val_bits_per_byte"], rel=1e-4)
    windows = [_window(a) for a in study["arms"]]
    # Every arm was training while every other was: all started before the first one ended.
    assert max(start for start, _ in windows) < min(end for _, end in windows), (windows, wall)
    serial = sum(a["train_seconds"] for a in study["arms"])
    print(f"parallel study: {wall:.1f} s wall, arms {serial:.1f} s of training in all")


@pytest.mark.timeout(300)
def test_failed_arm_is_named_after_the_arm_in_flight_finishes(sequential, ray_cluster, tmp_path):
    """A failing arm raises one line naming it, and only after the arm in flight beside it ran to its end."""
    reference = json.loads((sequential.out / "study.json").read_text())["arms"][0]
    ok = TrainConfig(dataset=str(sequential.out / "dataset"), output=str(tmp_path / "ok"),
                     patch_set=reference["patch_set"], model_overrides=SIZES["ci"].blt, seq_len=128, batch_size=2,
                     steps=4, cluster=ClusterConfig(num_workers=1), export_hf=False, log=LogConfig(every=2),
                     eval=EvalConfig(every=4, batches=1), samples=SampleConfig(prompts=[]))
    runs = [ArmRun(Arm("ok", PatchingParams()), ok.patch_set, None, ok),
            ArmRun(Arm("broken", PatchingParams()), ok.patch_set, None, replace(ok, seq_len=1))]
    with pytest.raises(ArmFailed, match=r"^arm broken: ValueError: seq_len must be >= 2$"):
        train_arms(runs, use_ray=True)
    assert read_metrics(ok.output)[-1]["step"] == 4


def test_room_counts_worker_groups():
    assert arm_room(ClusterConfig(num_workers=1), {"CPU": 8.0}) == 8
    assert arm_room(ClusterConfig(num_workers=2, cpus_per_worker=2), {"CPU": 9.0}) == 2
    assert arm_room(ClusterConfig(num_workers=4, use_gpu=True), {"CPU": 64.0, "GPU": 8.0}) == 2
    assert arm_room(ClusterConfig(num_workers=4), {"CPU": 2.0}) == 1  # too small: one at a time, never none
