"use strict";
// Shared by the dataset and the run dashboards: formatting, SVG charts (drawn at their card's width), sortable
// tables and the layout self-check. For the browser test the page records on <body>: data-errors (script errors),
// data-overflow (elements that stick out of their card or chart), data-checked and data-width.

window.onerror = function (msg) {
  const errors = JSON.parse(document.body.dataset.errors || "[]");
  errors.push(String(msg));
  document.body.dataset.errors = JSON.stringify(errors);
};

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#3b6fd8", "#d8743b", "#2e9e62", "#a63ba0", "#c9a227", "#2fb0c4", "#7a7a7a", "#d23b5a"];

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

// Round ticks (1, 2, 2.5 or 5 x 10^k apart) from at or below lo to at or above hi, at most ``count`` + 1 of them.
function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const d = Math.abs(hi) * 0.05 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(st => Math.ceil(hi / st - 1e-9) - Math.floor(lo / st + 1e-9) <= count) || 10 * mag;
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  return Array.from({length: last - first + 1}, (_, i) => +((first + i) * step).toPrecision(12));
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
  if (opts.fit) { // the data's range, not from zero: close curves (two runs' losses) stay apart
    const ticks = niceTicks(Math.min(...values.filter(v => v <= cap)), max, 5);
    const lo = ticks[0], hi = ticks[ticks.length - 1];
    return {lo, hi, ticks, f: v => (Math.min(v, hi) - lo) / (hi - lo)};
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
// "xy" (polylines over numeric x, e.g. the threshold sweep). opts: xlabel, xfmt, yfmt, log, ycap, markers; fit (y
// range of the data, not from 0), xnice/xinteger/xrange (round ticks on a numeric x axis), hlines, vlines, height.
// A series may carry color and dash.
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
  // "xy": the x range of every series (runs of different lengths share the axis), or opts.xrange.
  const allX = kind === "xy" ? series.flatMap(s => s.x).filter(x => x !== null && isFinite(x)) : xs;
  let x0 = opts.xrange ? opts.xrange[0] : Math.min(...allX), x1 = opts.xrange ? opts.xrange[1] : Math.max(...allX);
  if (kind === "xy" && !(x1 > x0)) { const d = Math.abs(x0) * 0.05 || 1; x0 -= d; x1 += d; } // one x: centred
  const px = kind === "xy" ? (x => L + pw * (x - x0) / Math.max(1e-12, x1 - x0)) : (i => L + pw * (i + 0.5) / n);
  const py = v => T + ph * (1 - Math.max(0, ys.f(v)));
  ys.ticks.forEach(v => {
    el("line", {x1: L, x2: W - R, y1: py(v), y2: py(v), class: "gridline"}, svg);
    el("text", {x: L - 4, y: py(v) + 4, "text-anchor": "end"}, svg).textContent = yfmt(v);
  });
  el("line", {x1: L, y1: T + ph, x2: W - R, y2: T + ph, class: "axis"}, svg);
  el("line", {x1: L, y1: T, x2: L, y2: T + ph, class: "axis"}, svg);
  const xfmt = opts.xfmt || (v => fmt(v));
  if (kind === "xy" && opts.xnice) { // round values along a numeric axis, as many as fit
    let ticks = [];
    for (let count = 8; count >= 1; count--) {
      ticks = niceTicks(x0, x1, count).filter(x => x >= x0 - 1e-9 * Math.abs(x1 - x0) && x <= x1 + 1e-9 * Math.abs(x1 - x0)
                                                 && (!opts.xinteger || Number.isInteger(x)));
      const w = Math.max(...ticks.map(x => textWidth(xfmt(x)))) + 10;
      if (ticks.length * w <= pw) break;
    }
    ticks.forEach(x => {
      el("line", {x1: px(x), x2: px(x), y1: T + ph, y2: T + ph + 3, class: "axis"}, svg);
      label(svg, px(x), T + ph + 14, xfmt(x), W);
    });
  } else {
    const labelW = Math.max(...xs.map(x => textWidth(xfmt(x)))) + 10;
    xTicks(xs, Math.max(2, Math.floor(pw / labelW))).forEach(i => label(svg, kind === "xy" ? px(xs[i]) : px(i), T + ph + 14, xfmt(xs[i]), W));
  }
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
        runs[runs.length - 1].push([kind === "xy" ? px(s.x[i]) : px(i), py(v)]);
      });
      runs.filter(r => r.length).forEach(r => {
        if (r.length === 1) el("circle", {cx: r[0][0], cy: r[0][1], r: 2.5, fill: color}, svg);
        else el("polyline", {points: r.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "), fill: "none", stroke: color,
                             "stroke-width": 1.8, "stroke-linejoin": "round", ...(s.dash ? {"stroke-dasharray": s.dash} : {})}, svg);
      });
    }
  });
  // Horizontal reference lines (e.g. a mix share's target) and vertical event lines (checkpoints, restarts).
  (opts.hlines || []).forEach(h => {
    if (h.y < ys.lo || h.y > ys.hi) return;
    el("line", {x1: L, x2: W - R, y1: py(h.y), y2: py(h.y), stroke: h.color || "#9aa3b2", "stroke-width": 2, "stroke-dasharray": h.dash || "1 4", "stroke-linecap": "round"}, svg);
  });
  (opts.vlines || []).forEach(v => {
    if (v.x < x0 || v.x > x1) return;
    const x = px(v.x); // an x value on an "xy" chart, a bin index otherwise
    const line = el("line", {x1: x, x2: x, y1: T, y2: T + ph, stroke: v.color || "#9aa3b2", "stroke-width": v.width || 1,
                             ...(v.dash ? {"stroke-dasharray": v.dash} : {}), class: "event " + (v.kind || "")}, svg);
    if (v.title) el("title", {}, line).textContent = v.title;
  });
  (opts.markers || []).forEach((m, k) => {
    if (m.x < x0 || m.x > x1) return;
    const cx = px(m.x), cy = py(Math.min(m.y, ys.hi));
    el("circle", {cx, cy, r: 4.5, fill: m.color || "#d23b3b", stroke: "#fff", "stroke-width": 1}, svg);
    const right = cx < L + pw / 2;
    label(svg, right ? cx + 7 : cx - 7, Math.max(T + 10, cy - 7 - 12 * (k % 2)), m.label, W, right ? "start" : "end")
      .setAttribute("class", "marker");
  });
  if (series.length > 1 || opts.legend) legend(host, series.map((s, k) => [s.name, s.color || COLORS[k % COLORS.length], s.dash]));
}

// items: [name, color, dash?]; a dashed series shows a dashed swatch.
function legend(host, items) {
  host.insertAdjacentHTML("beforeend", '<div class="legend">' + items.map(([name, color, dash]) => dash
    ? `<span><i class="dash" style="border-top-color:${color}"></i>${esc(name)}</span>`
    : `<span><i style="background:${color}"></i>${esc(name)}</span>`).join("") + "</div>");
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
