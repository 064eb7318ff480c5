"""The run dashboard and TensorBoard on two real tiny training runs (no Ray): one straight, one stopped and resumed
with another learning rate. The page's data (restart, checkpoints, bytes seen, config diff, mix targets, samples),
`blt dashboard` on runs and its server, TensorBoard's own reader on the event files, and the page in headless
Chromium at phone width and 1920 px (every chart drawn with both runs, nothing wider than its card, no script
error; screenshots under the test's tmp dir)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from browser import chromium_binary, png_has_content, render_in_chromium
from patched_datasets import corpus, write_dataset

from jobs.dashboard import main as dashboard_main
from jobs.train import main as train_main
from training.metrics import read_metrics
from training.run_dashboard import Sample, make_run_server, run_payload, write_run_dashboard, write_samples

CHARTS = ("train-loss", "val-loss", "val-sources", "lr", "bytes-per-s", "patches-per-s", "mfu", "data-wait",
          "bytes-per-patch", "patches-per-seq", "mix-shares", "timeline")


def _train(out: str, web: str, books: str, *extra: str) -> None:
    assert train_main(["--mix", f"{web}=0.75", "--mix", f"{books}=0.25", "--output", out, "--no-ray", "--preset",
                       "tiny", "--steps", "6", "--seq-len", "64", "--batch-size", "4", "--log-every", "1",
                       "--eval-every", "3", "--eval-batches", "1", "--stream.validation-fraction", "0.2",
                       "--checkpoint.every", "3", "--no-export-hf", *extra]) == 0


def _sample(prompt: str, text: str) -> Sample:
    data = (prompt + text).encode()
    lengths = [min(3 + i % 4, len(data) - sum(range(0))) for i in range(len(data))]
    out, pos = [], 0
    for length in lengths:
        if pos >= len(data):
            break
        out.append(min(length, len(data) - pos))
        pos += out[-1]
    return Sample(prompt, text, out)


# Headless Chromium's window is at least 500 px wide: a phone's width is an iframe of that width, whose body
# attributes and DOM the wrapper copies onto its own (file:// frames may read each other with the flag below).
WRAPPER = """<!doctype html><html><body style="margin:0"><div id="inner" hidden></div>
<iframe id="f" src="{src}" style="width:{width}px;height:{height}px;border:0"></iframe><script>
document.getElementById("f").addEventListener("load", e => {{
  const inner = e.target.contentDocument.body;
  for (const [k, v] of Object.entries(inner.dataset)) document.body.dataset[k] = v;
  document.getElementById("inner").textContent = inner.outerHTML;
}});</script></body></html>"""


def render_page(html_path: str, out_dir: Path, width: int, height: int = 2400) -> tuple[dict, Path]:
    if width >= 500:
        return render_in_chromium(html_path, out_dir, width, height)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = out_dir / f"phone-{width}.html"
    wrapper.write_text(WRAPPER.format(src=Path(html_path).as_uri(), width=width, height=height))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--allow-file-access-from-files", "--hide-scrollbars", f"--window-size={width + 110},{height}"]
    dom = subprocess.run([chromium_binary(), *flags, f"--user-data-dir={out_dir / 'profile-phone'}", "--dump-dom",
                          wrapper.as_uri()], capture_output=True, text=True, timeout=90).stdout
    body = dom.split("<body", 1)[1].split(">", 1)[0]
    attrs = {k: v.replace("&quot;", '"').replace("&amp;", "&") for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', body)}
    inner = dom.split('<div id="inner" hidden="">', 1)[1].split("</div>\n<iframe", 1)[0]
    shot = out_dir / f"dashboard-{width}.png"
    subprocess.run([chromium_binary(), *flags, f"--user-data-dir={out_dir / 'profile-phone-shot'}", f"--screenshot={shot}",
                    wrapper.as_uri()], capture_output=True, timeout=90)
    return attrs | {"dom": inner.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")}, shot


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    web, books = str(root / "web"), str(root / "books")
    write_dataset(web, corpus("en", 2, 60, seed=4, sizes=(20, 120)), batch_rows=6)
    write_dataset(books, corpus("b", 1, 40, seed=6, sizes=(50, 200)), batch_rows=4)
    a, b = str(root / "exp" / "base"), str(root / "exp" / "fast-lr")
    _train(a, web, books)
    _train(b, web, books, "--lr", "0.01", "--stop-after", "3")  # "dies" after its checkpoint at step 3
    _train(b, web, books, "--lr", "0.01")  # restarted: resumes at step 4
    for run in (a, b):
        for step in (3, 6):
            write_samples(run, step, [_sample("def main():\n    ", f"return {step}  # é→"), _sample("The ", "river")])
    return a, b


@pytest.mark.timeout(300)
def test_page_data_has_restarts_checkpoints_bytes_config_and_samples(runs):
    a, b = runs
    payload = run_payload([a, b])
    base, fast = payload["runs"]
    assert (base["name"], fast["name"]) == ("base", "fast-lr")
    assert [r["step"] for r in base["records"]] == [r["step"] for r in fast["records"]] == list(range(1, 7))
    assert [e["kind"] for e in base["events"]] == ["checkpoint", "checkpoint"]
    restarts = [e for e in fast["events"] if e["kind"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["step"] == 4  # the second attempt's first step
    assert {e["step"] for e in fast["events"] if e["kind"] == "checkpoint"} == {3, 6}
    assert fast["checkpoints"] == [3, 6] and base["checkpoints"] == [3, 6]
    assert [r["bytes_seen"] for r in base["records"]] == [4 * 64 * s for s in range(1, 7)]
    assert base["config"]["optim.lr"] == "0.003" and fast["config"]["optim.lr"] == "0.01"
    assert base["config"]["stream.mix"] == "web=0.75, books=0.25" and base["config"]["model.parameters"].endswith("M")
    assert base["mix_targets"] == pytest.approx({"web": 0.75, "books": 0.25})
    assert [s["step"] for s in fast["samples"]] == [3, 6] and fast["samples"][0]["samples"][1]["text"] == "river"


@pytest.mark.timeout(120)
def test_tensorboard_files_of_a_training_run_hold_every_scalar(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in runs:
        acc = EventAccumulator(f"{run}/tensorboard", size_guidance={"scalars": 0})
        acc.Reload()
        records = read_metrics(run)
        tags = {k for r in records for k, v in r.items() if k not in ("step", "time", "attempt")
                and isinstance(v, int | float)}
        assert {"loss", "lr", "bytes_per_s", "val_bits_per_byte", "val_bits_per_byte/web", "mix_share/books"} <= tags
        assert set(acc.Tags()["scalars"]) == tags
        for tag in tags:
            want = [(r["step"], r[tag]) for r in records if tag in r]
            got = [(e.step, e.value) for e in acc.Scalars(tag)]  # the resumed run's replay superseded nothing wrong
            assert [s for s, _ in got] == [s for s, _ in want], (run, tag)
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5), (run, tag)


@pytest.mark.timeout(120)
def test_blt_dashboard_cli_and_server_for_runs(runs, tmp_path, capsys):
    a, b = runs
    page = str(tmp_path / "cmp.html")
    assert dashboard_main([a, b, "--output", page]) == 0
    assert capsys.readouterr().out.strip() == page
    text = open(page).read()
    assert '<script type="application/json" id="runs-data">' in text and "http" not in text.split("<script")[0]
    assert dashboard_main([a]) == 0 and capsys.readouterr().out.strip() == f"{a}/dashboard.html"
    assert dashboard_main([a, str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither a dataset" in err
    server = make_run_server([a, b], 0, refresh_s=5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        html = urllib.request.urlopen(base + "/", timeout=30).read().decode()
        data = json.loads(urllib.request.urlopen(base + "/data.json", timeout=30).read())
        assert 'id="runs-data"' in html and data["live"] == 5 and [r["name"] for r in data["runs"]] == ["base", "fast-lr"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_page_in_chromium_at_phone_width_and_1920(runs, tmp_path):
    chromium_binary()
    page = write_run_dashboard(list(runs), str(tmp_path / "runs.html"))
    for width in (390, 1920):
        attrs, shot = render_page(page, tmp_path / "browser", width)
        assert attrs["errors"] == "[]", attrs["errors"]
        assert abs(int(attrs["width"]) - width) <= 20, attrs["width"]
        assert json.loads(attrs["overflow"]) == [], (width, attrs["overflow"])
        drawn = json.loads(attrs["series"])
        for chart in CHARTS:
            names = " ".join(drawn[chart])
            assert "base" in names and "fast-lr" in names, (chart, drawn[chart])
            assert f'data-chart="{chart}"' in attrs["dom"], chart
        assert drawn["val-sources"] == ["base · books", "fast-lr · books", "base · web", "fast-lr · web"]
        assert int(attrs["rendered"]) == len(CHARTS) + 4  # and 2 samples per run at the last checkpoint
        dom = attrs["dom"]
        assert dom.count('class="event restart"') == 2  # on the loss chart and the timeline
        assert dom.count('class="prompt"') >= 4 and 'class="cont"' in dom  # patch starts marked, prompt shaded
        assert '<tr class="diff">' in dom  # the learning rate (and output) differ
        assert png_has_content(shot)
    for view in ("x=bytes,unit=nats", "x=time", "x=flops"):  # the other x axes (the address carries the view)
        attrs, _ = render_in_chromium(f"{page}#{view}", tmp_path / view.replace(",", "-"), 1200)
        assert attrs["errors"] == "[]" and json.loads(attrs["overflow"]) == [], (view, attrs["overflow"])
        drawn = json.loads(attrs["series"])
        assert all(len(drawn[chart]) >= 2 for chart in CHARTS), (view, drawn)


@pytest.mark.timeout(120)
def test_run_on_object_storage_reads_and_writes_the_page_there(runs, bucket):
    import fsspec

    a, _ = runs
    url = f"{bucket}/runs/base"
    fs, _ = fsspec.core.url_to_fs(url)
    fs.put(a + "/", url.removeprefix("s3://"), recursive=True)
    local, remote = run_payload([a])["runs"][0], run_payload([url])["runs"][0]
    assert remote["records"] == local["records"] and remote["checkpoints"] == local["checkpoints"] == [3, 6]
    assert remote["config"] == local["config"] and [s["step"] for s in remote["samples"]] == [3, 6]
    assert dashboard_main([url]) == 0
    assert b'id="runs-data"' in fs.cat_file(f"{url}/dashboard.html".removeprefix("s3://"))


def test_events_tell_restarts_from_elastic_re_deals():
    from training.run_dashboard import _events

    log = [{"step": s, "time": 100.0 + s, "attempt": a, "workers": w}
           for s, a, w in [(1, 0, 2), (2, 0, 2), (3, 0, 2), (3, 1, 2), (4, 1, 2), (5, 2, 1), (6, 2, 1)]]
    records = [r for r in log if (r["step"], r["attempt"]) != (3, 0)]
    events = _events(records, log, committed=[4, 6], config={"checkpoint": {"every": 2}, "steps": 6})
    assert [(e["kind"], e["step"]) for e in events] == [
        ("checkpoint", 2), ("restart", 3), ("checkpoint", 4), ("re-deal", 5), ("checkpoint", 6)]
    assert events[3]["label"] == "attempt 2: 2 → 1 workers" and events[2]["label"] == "checkpoint 4 (kept)"
