"""``blt study --size ci --no-ray`` end to end on real text: entropy model, preprocessing, every arm trained to
the same FLOP budget, validated on the same held-out documents per source; study.json, study.md, study.html."""

from __future__ import annotations

import json

import pytest
from corpus import write_real_text

from jobs.study import main
from training.study import plan_arms

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_arms_cover_static_entropy_and_space():
    names = [a.name for a in plan_arms([4.5, 6.0, 8.0])]
    assert names == ["static-4", "entropy-4.5", "static-6", "entropy-6", "static-8", "entropy-8", "space",
                     "entropy-space"]


def test_study_ci_end_to_end(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_real_text(str(raw), code_bytes=60_000, prose_bytes=60_000)
    out = tmp_path / "study"
    assert main(["--output", str(out), "--inputs", f"{raw}/*/*.jsonl", "--size", "ci", "--patch-sizes", "[4]",
                 "--validation-fraction", "0.25", "--no-ray"]) == 0
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
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["arms"]) == set(arms)
