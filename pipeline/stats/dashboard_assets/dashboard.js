"use strict";
// Renders the statistics embedded in <script id="stats"> (stats.json) as cards, SVG charts and tables.
// Charts are drawn at their card's width and redrawn on resize, so labels stay readable and inside the box.
// For the browser test the page records on <body>: data-rendered (charts + example documents drawn),
// data-errors (script errors) and data-overflow (elements that stick out of their card or chart).

window.onerror = function (msg) {
  const errors = JSON.parse(document.body.dataset.errors || "[]");
  errors.push(String(msg));
  document.body.dataset.errors = JSON.stringify(errors);
};

const S = JSON.parse(document.getElementById("stats").textContent);
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#3b6fd8", "#d8743b", "#2e9e62", "#a63ba0", "#c9a227", "#2fb0c4", "#7a7a7a", "#d23b5a"];
const MAX_SOURCES = 8; // charts and examples show the largest sources by bytes; the table lists all
// "#log" in the address starts with log axes (a link can carry the view).
const state = {scale: /(^#|,)log(,|$)/.test(location.hash) ? "log" : "share", patchSet: S.default_patch_set};

const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (x, d = 2) => x === null || x === undefined ? "–"
  : typeof x === "number" ? (Number.isInteger(x) ? x.toLocaleString("en-US") : x.toFixed(d)) : x;
function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}
const pct = v => {
  if (v === 0) return "0%";
  const p = v * 100;
  return p >= 10 ? p.toFixed(0) + "%" : p >= 1 ? p.toFixed(1).replace(/\.0$/, "") + "%" : +p.toPrecision(1) + "%";
};
const shortSet = key => key.replace(/-[0-9a-f]{8}$/, "");
const sum = a => a.reduce((x, y) => x + y, 0);
const shares = counts => { const t = sum(counts); return counts.map(c => t ? c / t : 0); };

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
// Estimated width of a label (system-ui at this size): wide glyphs count more, so estimates err on the large side.
const textWidth = (s, size = 11) => [...String(s)].reduce((w, c) => w + (/[%MW@m]/.test(c) ? 0.95 : /[ .,:;il|]/.test(c) ? 0.35 : 0.62), 0) * size;

// A text label kept inside [0, W]: squeezed with textLength when wider than the box.
function label(svg, x, y, text, W, anchor = "middle") {
  const w = textWidth(text);
  if (anchor === "middle") x = Math.min(Math.max(x, w / 2 + 2), W - w / 2 - 2);
  else if (anchor === "start") x = Math.min(Math.max(x, 2), W - w - 2);
  else x = Math.max(Math.min(x, W - 2), w + 2);
  const t = el("text", {x, y, "text-anchor": anchor}, svg);
  t.textContent = text;
  if (w > W - 4) { t.setAttribute("x", anchor === "middle" ? W / 2 : 2); t.setAttribute("text-anchor", anchor === "middle" ? "middle" : "start");
    t.setAttribute("textLength", W - 4); t.setAttribute("lengthAdjust", "spacingAndGlyphs"); }
  return t;
}

function yScale(series, opts) {
  const values = series.flatMap(s => s.y).filter(v => v !== null && isFinite(v));
  const cap = opts.ycap || Infinity;
  const max = Math.min(cap, Math.max(1e-12, ...values));
  if (opts.log) {
    const positive = values.filter(v => v > 0);
    const lo = Math.floor(Math.log10(Math.max(1e-12, Math.min(...positive, max))));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(max)));
    const ticks = [];
    const every = Math.max(1, Math.ceil((hi - lo) / 5));
    for (let e = lo; e <= hi; e += every) ticks.push(10 ** e);
    return {lo: 10 ** lo, hi: 10 ** hi, ticks, f: v => v > 0 ? (Math.log10(v) - lo) / (hi - lo) : -1};
  }
  // 3 to 5 intervals of a round step (1, 2, 2.5 or 5 x 10^k), the top tick just above the largest value.
  const mag = 10 ** Math.floor(Math.log10(max / 5));
  const step = [1, 2, 2.5, 4, 5, 10, 20].map(m => m * mag).find(s => Math.ceil(max / s - 1e-9) <= 5);
  const count = Math.max(1, Math.ceil(max / step - 1e-9));
  const hi = Math.min(cap, step * count);
  const ticks = Array.from({length: count + 1}, (_, i) => step * i).filter(v => v <= hi * (1 + 1e-9));
  return {lo: 0, hi, ticks, f: v => Math.min(v, hi) / hi};
}

// Indexes of the x labels: at round values (multiples of 1, 2, 2.5 or 5 x 10^k) when the bins are evenly spaced,
// else every k-th bin; at most ``room`` labels.
function xTicks(xs, room) {
  const n = xs.length, dx = n > 1 ? xs[1] - xs[0] : 1;
  const even = xs.every((x, i) => i === 0 || Math.abs(x - xs[i - 1] - dx) < 1e-6 * Math.max(1, Math.abs(dx)));
  if (even && dx > 0) {
    const raw = dx * Math.ceil(n / room), mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw - 1e-12);
    const picked = xs.map((x, i) => [x, i]).filter(([x]) => Math.abs(x / step - Math.round(x / step)) < 1e-6).map(([, i]) => i);
    if (picked.length >= 2) return picked;
  }
  const step = Math.max(1, Math.ceil(n / room));
  return xs.map((_, i) => i).filter(i => i % step === 0);
}

// kind: "bar" (one series, one bar per bin), "line" (one polyline per series, points at bin centres), or
// "xy" (polylines over numeric x, e.g. the threshold sweep). opts: xlabel, xfmt, yfmt, log, ycap, markers.
function chart(host, kind, series, opts) {
  host.innerHTML = "";
  if (!series.length || !series[0].x.length) { host.innerHTML = '<div class="note">no data</div>'; return; }
  const W = Math.max(220, Math.floor(host.clientWidth || 400));
  const H = opts.height || Math.round(Math.min(250, Math.max(170, W * 0.5)));
  const ys = yScale(series, opts);
  const yfmt = opts.yfmt || (v => fmt(v, v < 10 ? 2 : 0));
  const L = 8 + Math.max(...ys.ticks.map(v => textWidth(yfmt(v)))), R = 12, T = 12, B = 38;
  const pw = W - L - R, ph = H - T - B;
  const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "data-chart": host.id,
                         "aria-label": opts.title || host.id}, host);
  const xs = series[0].x, n = xs.length;
  const x0 = xs[0], x1 = xs[n - 1];
  const px = kind === "xy" ? (x => L + pw * (x - x0) / Math.max(1e-12, x1 - x0)) : (i => L + pw * (i + 0.5) / n);
  const py = v => T + ph * (1 - Math.max(0, ys.f(v)));
  ys.ticks.forEach(v => {
    el("line", {x1: L, x2: W - R, y1: py(v), y2: py(v), class: "gridline"}, svg);
    el("text", {x: L - 4, y: py(v) + 4, "text-anchor": "end"}, svg).textContent = yfmt(v);
  });
  el("line", {x1: L, y1: T + ph, x2: W - R, y2: T + ph, class: "axis"}, svg);
  el("line", {x1: L, y1: T, x2: L, y2: T + ph, class: "axis"}, svg);
  const xfmt = opts.xfmt || (v => fmt(v));
  const labelW = Math.max(...xs.map(x => textWidth(xfmt(x)))) + 10;
  xTicks(xs, Math.max(2, Math.floor(pw / labelW))).forEach(i => label(svg, kind === "xy" ? px(xs[i]) : px(i), T + ph + 14, xfmt(xs[i]), W));
  label(svg, L + pw / 2, H - 6, opts.xlabel || "", W);
  series.forEach((s, k) => {
    const color = s.color || COLORS[k % COLORS.length];
    if (kind === "bar") {
      const w = pw / n;
      s.y.forEach((v, i) => { if (v > 0 && ys.f(v) > 0) el("rect", {x: L + w * i + 0.5, y: py(v), width: Math.max(1, w - 1), height: T + ph - py(v), fill: color}, svg); });
    } else {
      // Runs of drawable points (a zero has no place on a log axis: the line breaks there instead of jumping).
      const runs = [[]];
      s.y.forEach((v, i) => {
        if (v === null || (opts.log && !(v > 0))) { if (runs[runs.length - 1].length) runs.push([]); return; }
        runs[runs.length - 1].push([kind === "xy" ? px(xs[i]) : px(i), py(v)]);
      });
      runs.filter(r => r.length).forEach(r => {
        if (r.length === 1) el("circle", {cx: r[0][0], cy: r[0][1], r: 2, fill: color}, svg);
        else el("polyline", {points: r.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "), fill: "none", stroke: color,
                             "stroke-width": 1.8, "stroke-linejoin": "round"}, svg);
      });
    }
  });
  (opts.markers || []).forEach((m, k) => {
    if (m.x < x0 || m.x > x1) return;
    const cx = px(m.x), cy = py(Math.min(m.y, ys.hi));
    el("circle", {cx, cy, r: 4.5, fill: m.color || "#d23b3b", stroke: "#fff", "stroke-width": 1}, svg);
    const right = cx < L + pw / 2;
    label(svg, right ? cx + 7 : cx - 7, Math.max(T + 10, cy - 7 - 12 * (k % 2)), m.label, W, right ? "start" : "end")
      .setAttribute("class", "marker");
  });
  if (series.length > 1 || opts.legend) legend(host, series.map((s, k) => [s.name, s.color || COLORS[k % COLORS.length]]));
}

function legend(host, items) {
  host.insertAdjacentHTML("beforeend", '<div class="legend">' +
    items.map(([name, color]) => `<span><i style="background:${color}"></i>${esc(name)}</span>`).join("") + "</div>");
}

// Horizontal bars: one group per row label, one bar per series (e.g. average patch size per source and set).
function hbars(host, rows, names, opts) {
  host.innerHTML = "";
  if (!rows.length || !names.length) { host.innerHTML = '<div class="note">no patch sets</div>'; return; }
  const W = Math.max(220, Math.floor(host.clientWidth || 400));
  const bar = 12, gap = 10, T = 4;
  const H = T + rows.length * (names.length * bar + gap) + 24;
  const maxLabel = Math.min(W * 0.38, Math.max(...rows.map(r => textWidth(r.label))) + 8);
  const L = maxLabel + 6, R = 44, pw = W - L - R;
  const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "data-chart": host.id}, host);
  const max = Math.max(1e-12, ...rows.flatMap(r => r.values.filter(v => v !== null)));
  rows.forEach((r, i) => {
    const y0 = T + i * (names.length * bar + gap);
    const chars = Math.floor((maxLabel - 4) / (11 * 0.6));
    const text = r.label.length > chars ? "…" + r.label.slice(r.label.length - chars + 1) : r.label;
    const t = el("text", {x: L - 6, y: y0 + names.length * bar / 2 + 4, "text-anchor": "end"}, svg);
    t.textContent = text;
    el("title", {}, t).textContent = r.label;
    r.values.forEach((v, k) => {
      if (v === null) return;
      const w = Math.max(1, pw * v / max);
      el("rect", {x: L, y: y0 + k * bar, width: w, height: bar - 2, fill: COLORS[k % COLORS.length]}, svg);
      el("text", {x: L + w + 4, y: y0 + k * bar + bar - 3}, svg).textContent = fmt(v, 2);
    });
  });
  el("line", {x1: L, y1: T, x2: L, y2: H - 24, class: "axis"}, svg);
  label(svg, L + pw / 2, H - 6, opts.xlabel || "", W);
  legend(host, names.map((name, k) => [name, COLORS[k % COLORS.length]]));
}

// A sortable table. Column names starting with "~" are dropped on narrow windows (CSS class "opt"); the first
// column wraps anywhere (URLs), the others keep their numbers whole.
function table(id, columns, rows, limit) {
  const host = document.getElementById(id), t = document.createElement("table");
  const cls = columns.map((c, i) => (c.startsWith("~") ? "opt " : "") + (i ? "num" : "name"));
  t.innerHTML = "<thead><tr>" + columns.map((c, i) => `<th class="${cls[i]}">${esc(c.replace(/^~/, ""))}</th>`).join("") + "</tr></thead><tbody></tbody>";
  const body = t.querySelector("tbody");
  const cell = v => typeof v === "object" && v !== null ? v.html : esc(fmt(v));
  const key = v => typeof v === "object" && v !== null ? v.sort : v;
  const fill = () => {
    body.innerHTML = rows.slice(0, limit || rows.length).map(r => "<tr>" + r.map((v, i) => `<td class="${cls[i]}">${cell(v)}</td>`).join("") + "</tr>").join("");
  };
  t.querySelectorAll("th").forEach((th, c) => th.addEventListener("click", () => {
    const dir = th.dataset.dir === "desc" ? 1 : -1;
    t.querySelectorAll("th").forEach(h => delete h.dataset.dir);
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    rows.sort((a, b) => {
      const x = key(a[c]), y = key(b[c]);
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x > y ? 1 : x < y ? -1 : 0) * dir;
    });
    fill();
  }));
  fill();
  host.appendChild(t);
  if (limit && rows.length > limit) host.insertAdjacentHTML("beforeend", `<div class="note">first ${limit} of ${rows.length} rows (click a column to sort)</div>`);
}

// ---- data ----
const T = S.totals, sets = Object.entries(S.patch_sets), H = S.histograms;
const setKeys = sets.map(([k]) => k);
const sources = Object.entries(S.sources || {});
const shownSources = sources.slice(0, MAX_SOURCES); // stats.json lists sources by bytes, largest first
const sourceColor = i => COLORS[i % COLORS.length];
// Source names without the prefix they all share (up to a "/"), which the note above the table shows once.
const commonPrefix = (() => {
  const names = sources.map(([n]) => n);
  if (names.length < 2) return "";
  let p = names[0];
  for (const n of names) while (!n.startsWith(p)) p = p.slice(0, -1);
  return p.slice(0, p.lastIndexOf("/") + 1);
})();
const srcLabel = name => name.slice(commonPrefix.length) || name;
const skippedTotal = o => sum(Object.values(o || {}));

document.getElementById("totals").innerHTML = [
  ["documents", fmt(T.docs)], ["bytes", fmtBytes(T.bytes)], ["sources", fmt(T.sources ?? sources.length)],
  ["shards", fmt(T.shards)], ["patches (default set)", fmt(T.patches)], ["avg patch size", fmt(T.avg_patch_size) + " B"],
  ["mean entropy", T.mean_entropy === null || T.mean_entropy === undefined ? "–" : fmt(T.mean_entropy) + " nats"],
  ["skipped inputs", fmt(skippedTotal(T.skipped))],
].map(([k, v]) => `<div class="total">${esc(k)}<b>${esc(v)}</b></div>`).join("");

const select = document.getElementById("patch-set");
select.innerHTML = setKeys.map(k => `<option value="${esc(k)}"${k === state.patchSet ? " selected" : ""}>${esc(shortSet(k))}${k === S.default_patch_set ? " (default)" : ""}</option>`).join("");
if (!setKeys.includes(state.patchSet)) state.patchSet = setKeys[0];

// ---- tables ----
const g = S.grouping || {};
document.getElementById("grouping").textContent = "Sources: " + ((g.patterns || []).length
  ? "inputs matching " + g.patterns.map(([n, p]) => n === p ? p : `${n}=${p}`).join(", ") + `; the rest by ${g.group_by === "file" ? "file" : "directory"}`
  : `inputs grouped by ${g.group_by === "file" ? "file" : "directory"}`) + (commonPrefix ? `, names below relative to ${commonPrefix}` : "") +
  " (blt stats --source-pattern / --group-by).";
table("sources", ["source", "docs", "bytes", "~share of bytes", "mean entropy", "~median doc length"].concat(setKeys.map(k => "avg patch " + shortSet(k)), ["~skipped"]),
  sources.map(([name, v], i) => [
    {html: (i < MAX_SOURCES ? `<span class="swatch" style="background:${sourceColor(i)}"></span>` : "") + esc(srcLabel(name)), sort: name},
    v.docs, {html: esc(fmtBytes(v.bytes)), sort: v.bytes}, {html: pct(T.bytes ? v.bytes / T.bytes : 0), sort: v.bytes},
    v.mean_entropy, v.median_doc_length,
  ].concat(setKeys.map(k => v.patch_sets && v.patch_sets[k] ? v.patch_sets[k].avg_patch_size : null), [skippedTotal(v.skipped)])));
table("patch-sets", ["patch set", "~mode", "threshold", "~max patch", "~patches", "avg patch size", "patches/doc", "~calibrated to"],
  sets.map(([k, v]) => [k + (k === S.default_patch_set ? " (default)" : ""), v.params.mode, v.params.threshold, v.params.max_patch_length,
                        v.patches, v.avg_patch_size, v.patches_per_doc, v.calibration ? v.calibration.target_avg_patch_size : null]));
const classes = Object.entries(S.byte_classes).filter(([, v]) => v.bytes > 0);
table("byte-class-table", ["class", "bytes", "share", "mean entropy"], classes.map(([k, v]) => [k, v.bytes, {html: pct(v.bytes / T.bytes), sort: v.bytes}, v.mean_entropy]));
const shardRows = Object.entries(S.shards || {});
table("shards", ["shard", "~source", "docs", "bytes", "~skipped"].concat(setKeys.map(k => "~patches " + shortSet(k))),
  shardRows.map(([url, v]) => [url, srcLabel(v.source), v.docs, {html: esc(fmtBytes(v.bytes)), sort: v.bytes}, skippedTotal(v.skipped)]
    .concat(setKeys.map(k => v.patches[k] ?? null))), 300);
table("skips", ["reason", "count"], Object.entries(T.skipped).length ? Object.entries(T.skipped) : [["none", 0]]);

// ---- charts (redrawn on resize and when the y scale changes) ----
const charts = [];
const addChart = (id, draw) => charts.push([id, draw]);
const lengths = Array.from({length: 64}, (_, i) => i + 1);
const yopts = () => state.scale === "log" ? {log: true, yfmt: pct} : {yfmt: pct};
const setNames = setKeys.map(k => shortSet(k) + (k === S.default_patch_set ? " (default)" : ""));

// Patch lengths: on a linear axis up to the length that covers 99.9% of every set's patches (the rest is flat at
// zero), on a log axis up to the longest that occurs; at least 16. The last bin, 64, counts longer ones too.
const coverLength = (hist, q) => { const total = sum(hist); let acc = 0;
  for (let i = 0; i < hist.length; i++) { acc += hist[i]; if (acc >= q * total) return i; } return hist.length - 1; };
const patchRange = q => Math.max(16, ...sets.map(([, v]) => coverLength(v.length_hist, q)));
addChart("patch-lengths", h => {
  const last = patchRange(state.scale === "log" ? 1 : 0.999);
  chart(h, "line", sets.map(([, v], k) => ({name: setNames[k], x: lengths.slice(0, last), y: shares(v.length_hist.slice(1)).slice(0, last)})),
    {...yopts(), xlabel: `patch length (bytes${last === 64 ? "; last bin ≥ 64" : ""}), share of each set's patches`, legend: true});
});
const SW = S.threshold_sweep;
// Only global-threshold sets sit on this curve: other modes' thresholds mean something else (rises, budgets).
const markers = sets.filter(([, v]) => v.params.mode === "entropy" && v.params.max_patch_length == null)
  .map(([k, v]) => ({x: v.params.threshold, y: v.avg_patch_size, label: shortSet(k) + ` (${fmt(v.avg_patch_size)})`}));
addChart("sweep", h => chart(h, "xy", [{name: "avg patch size", x: SW.threshold, y: SW.avg_patch_size}],
  {xlabel: "entropy threshold (nats); y capped at 16 bytes", markers, ycap: 16, yfmt: v => fmt(v, 1)}));
addChart("sweep-docs", h => chart(h, "xy", [{name: "patches per document", x: SW.threshold, y: SW.patches_per_doc}],
  {xlabel: "entropy threshold (nats)", yfmt: v => v >= 1000 ? (v / 1000).toFixed(0) + "k" : fmt(v, v < 10 ? 1 : 0)}));
addChart("entropy", h => chart(h, "bar", [{name: "bytes", x: H.entropy.bins, y: shares(H.entropy.counts)}],
  {...yopts(), xlabel: "next-byte entropy (nats), share of bytes", xfmt: v => fmt(v, 1)}));
addChart("byte-classes", h => chart(h, "line", classes.map(([k, v]) => ({name: k, x: H.entropy.bins, y: shares(v.hist)})),
  {...yopts(), xlabel: "entropy (nats), share of each class's bytes", xfmt: v => fmt(v, 1)}));
// Document-length bins trimmed to the lengths that occur (of 25 power-of-two bins up to 16 MB), at least 8.
const lastDocBin = Math.max(7, ...[H.doc_length.counts, ...sources.map(([, v]) => v.doc_length_hist || [])]
  .map(c => c.reduce((last, x, i) => x ? i : last, 0))) + 1;
const trim = a => a.slice(0, lastDocBin);
const docBins = trim(H.doc_length.bins), docFmt = v => v >= 1048576 ? (v / 1048576) + "M" : v >= 1024 ? (v / 1024) + "k" : String(v);
addChart("doc-length", h => chart(h, "bar", [{name: "documents", x: docBins, y: shares(trim(H.doc_length.counts))}],
  {...yopts(), xlabel: "document length (bytes, log2 bins), share of documents", xfmt: docFmt}));
if (sources.length) {
  addChart("source-entropy", h => chart(h, "line", shownSources.map(([name, v], i) => ({name: srcLabel(name), color: sourceColor(i), x: H.entropy.bins, y: shares(v.entropy_hist)})),
    {...yopts(), xlabel: "next-byte entropy (nats), share of each source's bytes", xfmt: v => fmt(v, 1), legend: true}));
  addChart("source-doc-length", h => chart(h, "line", shownSources.map(([name, v], i) => ({name: srcLabel(name), color: sourceColor(i), x: docBins, y: shares(trim(v.doc_length_hist))})),
    {...yopts(), xlabel: "document length (bytes), share of each source's documents", xfmt: docFmt, legend: true}));
  addChart("source-patch-size", h => hbars(h, shownSources.map(([name, v]) => ({label: srcLabel(name), values: setKeys.map(k => v.patch_sets && v.patch_sets[k] ? v.patch_sets[k].avg_patch_size : null)})),
    setNames, {xlabel: "average patch size (bytes) per patch set"}));
}

function drawCharts() {
  let n = 0;
  for (const [id, draw] of charts) {
    const host = document.getElementById(id);
    if (host) { draw(host); n++; }
  }
  return n;
}

// ---- example documents: one per source, near the source's median length ----
const heat = h => `hsl(${Math.max(0, 220 - h * 42)}, 85%, ${Math.min(92, 80 + (5 - Math.min(h, 5)) * 2.4)}%)`;
function drawExamples() {
  const host = document.getElementById("examples");
  host.innerHTML = "";
  let n = 0;
  const items = sources.length ? shownSources.filter(([, v]) => v.example).map(([name, v]) => [name, v])
    : (S.example ? [["dataset", {example: S.example}]] : []);
  items.forEach(([name, v]) => {
    const ex = v.example;
    const key = state.patchSet in ex.patch_lengths ? state.patchSet : Object.keys(ex.patch_lengths)[0];
    const lens = ex.patch_lengths[key] || [];
    const panel = document.createElement("div");
    panel.className = "panel";
    const shown = ex.bytes.length, patches = lens.length;
    panel.innerHTML = `<b>${esc(srcLabel(name))}</b><div class="note">${esc(ex.doc_id)} · ${fmt(ex.length ?? shown)} bytes` +
      (v.median_doc_length !== undefined ? ` (source median ${fmt(v.median_doc_length, 0)})` : "") +
      (shown < (ex.length ?? shown) ? ` · first ${fmt(shown)} shown` : "") +
      ` · ${esc(shortSet(key || "–"))}: ${patches} patches, ${patches ? fmt(shown / patches) : "–"} bytes each</div>`;
    const doc = document.createElement("div");
    doc.className = "doc";
    const dec = new TextDecoder();
    let pos = 0;
    for (const len of lens) {
      if (pos >= shown) break;
      const span = document.createElement("span"), h = pos > 0 ? ex.entropies[pos - 1] : null;
      span.textContent = dec.decode(new Uint8Array(ex.bytes.slice(pos, pos + len)));
      span.style.background = h === null ? "#eef0f4" : heat(h);
      span.title = h === null ? `patch of ${len} bytes (document start)` : `patch of ${len} bytes; entropy before it ${h.toFixed(2)} nats`;
      doc.appendChild(span);
      pos += len;
    }
    if (!lens.length) doc.textContent = ex.text;
    panel.appendChild(doc);
    host.appendChild(panel);
    n++;
  });
  return n;
}
document.getElementById("heat").style.background = `linear-gradient(90deg, ${[0, 1, 2, 3, 4, 5].map(heat).join(", ")})`;

// ---- self-check: no element wider than its card, no chart label outside its chart ----
function checkLayout() {
  const bad = [];
  const name = e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.closest("[id]") ? " in #" + e.closest("[id]").id : "");
  let checked = 0;
  document.querySelectorAll(".panel, .total").forEach(card => {
    const box = card.getBoundingClientRect();
    card.querySelectorAll("*").forEach(e => {
      const r = e.getBoundingClientRect();
      if (!r.width && !r.height) return;
      checked++;
      if (r.left < box.left - 1 || r.right > box.right + 1) bad.push(`${name(e)} ${r.left.toFixed(0)}..${r.right.toFixed(0)} outside card ${box.left.toFixed(0)}..${box.right.toFixed(0)}`);
    });
  });
  document.querySelectorAll("svg").forEach(svg => {
    const box = svg.getBoundingClientRect();
    svg.querySelectorAll("text, rect, circle, polyline, line").forEach(e => {
      const r = e.getBoundingClientRect();
      checked++;
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        bad.push(`${e.tagName} "${(e.textContent || "").slice(0, 30)}" outside chart ${svg.dataset.chart}`);
    });
  });
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth + 1) bad.push(`page ${page.scrollWidth}px wider than window ${page.clientWidth}px`);
  document.body.dataset.overflow = JSON.stringify(bad.slice(0, 40));
  document.body.dataset.checked = String(checked);
  document.body.dataset.width = String(window.innerWidth);
}

function render() {
  const n = drawCharts() + drawExamples();
  document.body.dataset.rendered = String(n);
  checkLayout();
}
document.querySelectorAll('input[name="scale"]').forEach(r => {
  r.checked = r.value === state.scale;
  r.addEventListener("change", () => { state.scale = r.value; history.replaceState(null, "", r.value === "log" ? "#log" : "#"); render(); });
});
select.addEventListener("change", () => { state.patchSet = select.value; render(); });
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(render, 120); });
render();
