"""The run dashboard: one self-contained HTML page (no network) for one or several training runs, overlaid.

Built on the dataset dashboard's assets (``pipeline/stats/dashboard_assets/``: its CSS and the chart code in
``charts.js``; ``run.js`` and ``run_template.html`` are the run page's own), with the runs' data inlined as JSON.
It reads, per run output URL:

- the metrics (``read_metrics``: the final record of every step; ``read_metrics_log``: every record as written,
  whose ``time``/``attempt``/``workers`` stamps give the restarts and elastic re-deals on the time axis);
- ``checkpoints/step-*`` (the committed ones) and the checkpoint schedule of the run's configuration;
- the configuration: ``run_config.json`` (written by ``announce_run`` at every launch), else the latest checkpoint's
  ``train_state.json``;
- samples, ``samples/step-<N>.json``, one file per checkpoint step::

      {"step": N, "samples": [{"prompt": str, "text": str, "patch_lengths": [int, ...]}, ...]}

  ``text`` is the model's (greedy) continuation of ``prompt``; ``patch_lengths`` partition the UTF-8 bytes of
  ``prompt + text`` as the model patched them (the page marks each patch start, as the dataset page does). Write
  them with ``write_samples``.

``blt dashboard RUN_URL [RUN_URL ...]`` writes the page (``write_run_dashboard``); ``--serve`` serves it on
127.0.0.1 and the page re-reads the runs every few seconds (``make_run_server``).
"""

from __future__ import annotations

import html
import http.server
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field

from pipeline.io.logs import get_logger
from pipeline.io.storage import exists, join, list_detailed, read_bytes, write_bytes_atomic
from pipeline.stats.dashboard import asset

from .metrics import read_metrics, read_metrics_log
from .tensorboard_log import DIRECTORY as TENSORBOARD_DIRECTORY

log = get_logger(__name__)

_STEP_DIR = re.compile(r"/step-(\d+)/")
_SAMPLE = re.compile(r"/step-(\d+)\.json$")


@dataclass
class Sample:
    prompt: str
    text: str
    patch_lengths: list[int]


@dataclass
class SampleSet:
    step: int
    samples: list[Sample] = field(default_factory=list)


def write_samples(output: str, step: int, samples: list[Sample]) -> str:
    """``<output>/samples/step-<N>.json`` in the page's format; its URL."""
    for s in samples:
        if sum(s.patch_lengths) != len((s.prompt + s.text).encode()):
            raise ValueError(f"patch_lengths cover {sum(s.patch_lengths)} bytes, prompt + text has "
                             f"{len((s.prompt + s.text).encode())}")
    url = join(output, "samples", f"step-{step:08d}.json")
    write_bytes_atomic(url, json.dumps(asdict(SampleSet(step, samples))).encode())
    return url


def is_run(url: str) -> bool:
    """A training output: metrics (``metrics.jsonl`` or ``metrics/`` parts) or ``checkpoints/``."""
    return any(exists(join(url, name)) for name in ("metrics.jsonl", "metrics", "checkpoints"))


def announce_run(output: str, config: dict) -> None:
    """At launch: ``<output>/run_config.json`` (what the dashboard's configuration table shows) and one log line saying
    where the dashboard and the TensorBoard files are."""
    write_bytes_atomic(join(output, "run_config.json"), json.dumps(config, indent=1, default=str).encode())
    log.info("run dashboard: blt dashboard %s [--serve]; TensorBoard: tensorboard --logdir %s",
             output, join(output, TENSORBOARD_DIRECTORY))


# ---- reading one run ----

def _read_json(url: str) -> dict | None:
    try:
        return json.loads(read_bytes(url))
    except (FileNotFoundError, ValueError):
        return None


def _config(url: str) -> dict:
    config = _read_json(join(url, "run_config.json"))
    if config is None:
        latest = _read_json(join(url, "checkpoints", "latest.json"))
        if latest is not None:
            state = _read_json(join(url, "checkpoints", f"step-{latest['step']:08d}", "train_state.json")) or {}
            config = state.get("config")
    return config or {}


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> display strings; a stream mix as ``name=weight`` items."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        elif name == "stream.mix":
            flat[name] = ", ".join(f"{_source_label(s)}={s.get('weight', 1.0):g}" for s in value) or "–"
        else:
            flat[name] = "–" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat


def _source_label(spec: dict) -> str:
    from pipeline.stream.mixing import SourceSpec

    return SourceSpec(**spec).label()


def _mix_targets(config: dict) -> dict[str, float]:
    mix = (config.get("stream") or {}).get("mix") or []
    total = sum(s.get("weight", 1.0) for s in mix)
    return {_source_label(s): s.get("weight", 1.0) / total for s in mix} if total else {}


def _model_summary(config: dict) -> dict[str, str]:
    """The preset's sizes (encoder / global / decoder widths and depths) and the parameter count (built on the
    meta device: no memory, no time)."""
    if "patch_set" not in config or "preset" not in config:  # a BLT run (an entropy model's presets differ)
        return {}
    try:
        from blt_model import ByteLatentTransformer

        from .config import TrainConfig
        from .parallelize import build_on_meta

        known = {k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__}
        model_cfg = TrainConfig(**known).model_config()
        model = build_on_meta(lambda: ByteLatentTransformer(model_cfg))
        params = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # a config this version cannot build: the table shows the raw fields only
        log.warning("model summary unavailable: %s", exc)
        return {}
    out = {"model.parameters": f"{params / 1e6:.2f}M"}
    for part in ("encoder", "global", "decoder"):
        sub = getattr(model_cfg, f"{part}_config", None)
        if sub is not None:
            out[f"model.{part}"] = f"{sub.hidden_size} wide x {sub.num_hidden_layers} layers"
    return out


def _checkpoint_steps(url: str) -> list[int]:
    found = {int(m[1]) for u in list_detailed(join(url, "checkpoints")) if (m := _STEP_DIR.search(u))}
    return sorted(found)


def _samples(url: str) -> list[dict]:
    sets = []
    for u in sorted(list_detailed(join(url, "samples"))):
        if _SAMPLE.search(u):
            data = _read_json(u)
            if data and isinstance(data.get("samples"), list):
                sets.append({"step": int(data.get("step", _SAMPLE.search(u)[1])), "samples": data["samples"]})
    return sorted(sets, key=lambda s: s["step"])


def _bytes_seen(records: list[dict], seq_len: int | None) -> None:
    """``bytes_seen`` per record: ``bytes_total`` where logged, else steps x global batch x sequence length."""
    total, prev = 0, 0
    for r in records:
        if "bytes_total" in r:
            r["bytes_seen"] = r["bytes_total"]
        elif seq_len and "global_batch" in r:
            total += (r["step"] - prev) * r["global_batch"] * seq_len
            r["bytes_seen"] = total
        prev = r["step"]


def _events(records: list[dict], log_records: list[dict], committed: list[int], config: dict) -> list[dict]:
    """Restarts (a new attempt), elastic re-deals (a new attempt on another number of workers) and checkpoints,
    each at a step and a wall time."""
    events: list[dict] = []
    previous = None
    for r in log_records:
        attempt = r.get("attempt")
        if previous is not None and attempt is not None and attempt != previous.get("attempt"):
            before, now = previous.get("workers"), r.get("workers")
            redeal = before is not None and now is not None and before != now
            events.append({"kind": "re-deal" if redeal else "restart", "step": r["step"], "time": r.get("time"),
                           "label": f"attempt {attempt}" + (f": {before} → {now} workers" if redeal else "")})
        previous = r
    every = (config.get("checkpoint") or {}).get("every")
    last = records[-1]["step"] if records else 0
    scheduled = set(range(every, last + 1, every)) if every else set()
    if config.get("steps") and last >= config["steps"]:
        scheduled.add(config["steps"])
    for step in sorted(scheduled | set(committed)):
        at = next((r for r in records if r["step"] >= step), None)
        events.append({"kind": "checkpoint", "step": step, "time": at.get("time") if at else None,
                       "label": f"checkpoint {step}" + (" (kept)" if step in committed else "")})
    return sorted(events, key=lambda e: (e["time"] or math.inf, e["step"]))


def _names(urls: list[str]) -> list[str]:
    """The shortest distinct path tails: ``a/run`` and ``b/run`` rather than two ``run``."""
    parts = [u.rstrip("/").split("/") for u in urls]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(urls)


def read_run(url: str, name: str) -> dict:
    """One run's part of the page's payload."""
    records = read_metrics(url)
    log_records = [{k: r.get(k) for k in ("step", "time", "attempt", "workers")} for r in read_metrics_log(url)]
    config = _config(url)
    _bytes_seen(records, config.get("seq_len"))
    committed = _checkpoint_steps(url)
    flat = _flatten(config)
    flat.update(_model_summary(config))
    return {"name": name, "url": url, "records": records, "log": log_records, "events": _events(records, log_records,
            committed, config), "checkpoints": committed, "config": flat, "target_steps": config.get("steps"),
            "mix_targets": _mix_targets(config), "samples": _samples(url)}


def run_payload(urls: list[str], live: float = 0) -> dict:
    missing = [u for u in urls if not is_run(u)]
    if missing:
        raise FileNotFoundError(f"not a training run (no metrics.jsonl, metrics/ or checkpoints/): {missing[0]}")
    return {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "live": live,
            "runs": [read_run(u, n) for u, n in zip(urls, _names(urls), strict=True)]}


def render_run_dashboard(payload: dict) -> str:
    data = json.dumps(payload, separators=(",", ":"), default=str).replace("<", "\\u003c")
    names = ", ".join(r["name"] for r in payload["runs"])
    values = {"title": html.escape(f"BLT training — {names}"), "generated": html.escape(payload["generated"]),
              "css": asset("dashboard.css"), "js": asset("charts.js") + "\n" + asset("run.js"), "payload": data}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], asset("run_template.html"))


def default_page_url(urls: list[str]) -> str:
    """One run: ``<run>/dashboard.html``; several: ``runs-dashboard.html`` in the working directory."""
    return join(urls[0], "dashboard.html") if len(urls) == 1 else "runs-dashboard.html"


def write_run_dashboard(urls: list[str], page: str | None = None) -> str:
    """Render the runs' page and write it (atomically, at any fsspec URL); its URL."""
    page = page or default_page_url(urls)
    write_bytes_atomic(page, render_run_dashboard(run_payload(urls)).encode())
    return page


def make_run_server(urls: list[str], port: int, refresh_s: float = 10.0) -> http.server.ThreadingHTTPServer:
    """``/``: the page, re-rendered per request; ``/data.json``: the runs as now, which the page polls every
    ``refresh_s`` seconds and redraws from."""
    run_payload(urls)  # fail now on a wrong URL, not on the first request

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path in ("/", "/dashboard.html"):
                body, kind = render_run_dashboard(run_payload(urls, refresh_s)).encode(), "text/html; charset=utf-8"
            elif path == "/data.json":
                body = json.dumps(run_payload(urls, refresh_s), default=str).encode()
                kind = "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)

