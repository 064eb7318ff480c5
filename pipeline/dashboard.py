"""A self-contained ``dashboard.html`` for ``stats.json``: inline CSS and JavaScript, charts drawn as SVG.

Nothing is fetched over the network: the statistics are embedded as JSON and rendered by a small script.
The page marks ``<body data-rendered="N">`` with the number of charts drawn and records any script error in
``data-errors``, which the browser test reads.
"""

from __future__ import annotations

import html
import json

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6577;margin-bottom:16px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:20px}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
.panel{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:12px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:4px 8px;border-bottom:1px solid #e6e9ef;text-align:right}
th{cursor:pointer;background:#f1f3f7;user-select:none}td:first-child,th:first-child{text-align:left}
.doc{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;background:#fff;border:1px solid #dde2ea;
border-radius:8px;padding:12px}.doc span{border-left:2px solid #1d2330;padding:1px 0}
svg text{font-size:11px;fill:#5b6577}.legend{font-size:12px;color:#5b6577}
"""

_JS = r"""
window.onerror = function (msg) {
  const errors = JSON.parse(document.body.dataset.errors || "[]"); errors.push(String(msg));
  document.body.dataset.errors = JSON.stringify(errors);
};
const S = JSON.parse(document.getElementById("stats").textContent);
const NS = "http://www.w3.org/2000/svg";
let drawn = 0;
const fmt = (x, d = 2) => x === null || x === undefined ? "–" : (typeof x === "number" ? (Number.isInteger(x) ? x.toLocaleString() : x.toFixed(d)) : x);
function el(tag, attrs, parent) { const e = document.createElementNS(NS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; }
function chart(id, kind, series, opts) {
  const W = 460, H = 240, L = 48, B = 34, host = document.getElementById(id);
  const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-chart": id}, host);
  const xs = series[0].x, n = xs.length;
  const ymax = Math.min(opts.ycap || Infinity, Math.max(1e-9, ...series.flatMap(s => s.y.filter(v => v !== null))));
  const px = i => L + (W - L - 10) * (kind === "bar" ? i / n : i / Math.max(1, n - 1));
  const py = v => H - B - (H - B - 10) * Math.min(v, ymax) / ymax;
  el("line", {x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#9aa3b2"}, svg);
  el("line", {x1: L, y1: 10, x2: L, y2: H - B, stroke: "#9aa3b2"}, svg);
  for (let t = 0; t <= 4; t++) { const v = ymax * t / 4; el("text", {x: 4, y: py(v) + 4}, svg).textContent = fmt(v, v < 10 ? 2 : 0); }
  const step = Math.max(1, Math.ceil(n / 8));
  for (let i = 0; i < n; i += step) el("text", {x: px(i), y: H - B + 14}, svg).textContent = opts.xfmt ? opts.xfmt(xs[i]) : fmt(xs[i]);
  el("text", {x: W / 2, y: H - 4, "text-anchor": "middle"}, svg).textContent = opts.xlabel || "";
  const colors = ["#3b6fd8", "#d8743b", "#3ba66b", "#a63ba0", "#7a7a7a"];
  series.forEach((s, k) => {
    if (kind === "bar") {
      const w = (W - L - 10) / n / series.length;
      s.y.forEach((v, i) => el("rect", {x: px(i) + k * w, y: py(v), width: Math.max(1, w - 1), height: H - B - py(v), fill: colors[k % 5]}, svg));
    } else {
      el("polyline", {points: s.y.map((v, i) => `${px(i)},${py(v)}`).join(" "), fill: "none", stroke: colors[k % 5], "stroke-width": 2}, svg);
    }
  });
  (opts.markers || []).forEach(m => {
    const i = xs.findIndex(x => x >= m.x); if (i < 0) return;
    el("circle", {cx: px(i), cy: py(m.y), r: 5, fill: "#d23b3b"}, svg);
    el("text", {x: px(i) + 7, y: py(m.y) - 7}, svg).textContent = m.label;
  });
  if (series.length > 1) host.insertAdjacentHTML("beforeend", '<div class="legend">' + series.map((s, k) => `<span style="color:${colors[k % 5]}">■</span> ${s.name}`).join(" &nbsp; ") + "</div>");
  drawn++;
}
function table(id, columns, rows) {
  const host = document.getElementById(id), t = document.createElement("table");
  t.innerHTML = "<thead><tr>" + columns.map(c => `<th>${c}</th>`).join("") + "</tr></thead><tbody></tbody>";
  const body = t.querySelector("tbody");
  const fill = () => { body.innerHTML = rows.map(r => "<tr>" + r.map(v => `<td>${fmt(v)}</td>`).join("") + "</tr>").join(""); };
  t.querySelectorAll("th").forEach((th, c) => th.addEventListener("click", () => {
    const dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir === 1 ? "asc" : "desc";
    rows.sort((a, b) => (a[c] > b[c] ? 1 : a[c] < b[c] ? -1 : 0) * dir); fill();
  }));
  fill(); host.appendChild(t);
}
const T = S.totals, sets = Object.entries(S.patch_sets);
document.getElementById("cards").innerHTML = [
  ["documents", fmt(T.docs)], ["bytes", fmt(T.bytes)], ["shards", fmt(T.shards)], ["patches (default set)", fmt(T.patches)],
  ["avg patch size", fmt(T.avg_patch_size)], ["skipped", fmt(Object.values(T.skipped).reduce((a, b) => a + b, 0))],
].map(([k, v]) => `<div class="card">${k}<b>${v}</b></div>`).join("");
const lengths = Array.from({length: 64}, (_, i) => i + 1);
chart("patch-lengths", "bar", sets.map(([k, v]) => ({name: k, y: v.length_hist.slice(1), x: lengths})), {xlabel: "patch length (bytes; last bin: ≥ 64)"});
const H = S.histograms;
chart("entropy", "bar", [{name: "bytes", x: H.entropy.bins, y: H.entropy.counts}], {xlabel: "next-byte entropy (nats)"});
chart("doc-length", "bar", [{name: "documents", x: H.doc_length.bins, y: H.doc_length.counts}], {xlabel: "document length (bytes, log2 bins)", xfmt: v => v >= 1024 ? (v / 1024) + "k" : v});
const classes = Object.entries(S.byte_classes).filter(([, v]) => v.bytes > 0);
chart("byte-classes", "line", classes.map(([k, v]) => ({name: k, x: H.entropy.bins, y: v.hist.map(c => c / v.bytes)})), {xlabel: "entropy (nats), share of each class's bytes"});
table("byte-class-table", ["class", "bytes", "mean entropy"], classes.map(([k, v]) => [k, v.bytes, v.mean_entropy]));
const SW = S.threshold_sweep;
const markers = sets.filter(([, v]) => ["entropy", "monotonic", "threshold_add"].includes(v.params.mode)).map(([k, v]) => ({x: v.params.threshold, y: v.avg_patch_size, label: k.split("-").slice(0, 2).join("-")}));
chart("sweep", "line", [{name: "avg patch size", x: SW.threshold, y: SW.avg_patch_size}], {xlabel: "entropy threshold (mode 'entropy'); y capped at 16", markers, ycap: 16});
chart("sweep-docs", "line", [{name: "patches per document", x: SW.threshold, y: SW.patches_per_doc}], {xlabel: "entropy threshold"});
table("patch-sets", ["patch set", "mode", "threshold", "max patch", "patches", "avg patch size", "patches/doc", "calibrated to"],
  sets.map(([k, v]) => [k, v.params.mode, v.params.threshold, v.params.max_patch_length, v.patches, v.avg_patch_size, v.patches_per_doc, v.calibration ? v.calibration.target_avg_patch_size : null]));
table("shards", ["input shard", "docs", "bytes", "skipped"].concat(sets.map(([k]) => "patches " + k.split("-").slice(0, 2).join("-"))),
  Object.entries(S.sources).map(([url, v]) => [url, v.docs, v.bytes, Object.values(v.skipped).reduce((a, b) => a + b, 0)].concat(sets.map(([k]) => v.patches[k] ?? null))));
table("skips", ["reason", "count"], Object.entries(T.skipped));
const ex = S.example;
if (ex) {
  const key = S.default_patch_set in ex.patch_lengths ? S.default_patch_set : Object.keys(ex.patch_lengths)[0];
  const host = document.getElementById("example"); let pos = 0;
  document.getElementById("example-title").textContent = `${ex.doc_id} — patch set ${key} (colour: entropy of the patch's first byte)`;
  const dec = new TextDecoder();
  for (const len of (ex.patch_lengths[key] || [])) {
    if (pos >= ex.bytes.length) break;
    const span = document.createElement("span"), h = ex.entropies[pos];
    span.textContent = dec.decode(new Uint8Array(ex.bytes.slice(pos, pos + len)));
    span.style.background = `hsl(${Math.max(0, 220 - h * 40)}, 80%, 85%)`; span.title = `entropy ${h}`;
    host.appendChild(span); pos += len;
  }
  drawn++;
}
document.body.dataset.rendered = String(drawn);
"""


def render_dashboard(stats: dict) -> str:
    payload = json.dumps(stats).replace("</", "<\\/")  # keep the JSON from closing its <script>
    title = html.escape(f"BLT dataset — {stats['dataset']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>
<body data-rendered="0" data-errors="[]">
<h1>{title}</h1>
<div class="sub">generated {html.escape(stats['generated'])} · entropy model {html.escape(str((stats.get('entropy_model') or {}).get('id')))}
 · default patch set {html.escape(str(stats.get('default_patch_set')))}</div>
<div class="cards" id="cards"></div>
<h2>Patches</h2>
<div class="grid"><div class="panel"><b>Patch length</b><div id="patch-lengths"></div></div>
<div class="panel"><b>Threshold sweep: average patch size</b><div id="sweep"></div></div>
<div class="panel"><b>Threshold sweep: patches per document</b><div id="sweep-docs"></div></div></div>
<h2>Patch sets</h2><div id="patch-sets"></div>
<h2>Entropy</h2>
<div class="grid"><div class="panel"><b>Per-byte entropy</b><div id="entropy"></div></div>
<div class="panel"><b>Entropy by byte class</b><div id="byte-classes"></div><div id="byte-class-table"></div></div>
<div class="panel"><b>Document length</b><div id="doc-length"></div></div></div>
<h2>Shards</h2><div id="shards"></div>
<h2>Skipped input</h2><div id="skips"></div>
<h2>Example document</h2><div class="sub" id="example-title"></div><div class="doc" id="example"></div>
<script type="application/json" id="stats">{payload}</script>
<script>{_JS}</script>
</body></html>
"""
