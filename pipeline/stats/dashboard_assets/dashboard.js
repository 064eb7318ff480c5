// Renders the statistics embedded in <script id="stats"> (stats.json) as cards, SVG charts and tables, with the
// chart and table code of charts.js (inlined before this file). data-rendered on <body>: charts + example documents.

const S = JSON.parse(document.getElementById("stats").textContent);
const MAX_SOURCES = 8; // charts and examples show the largest sources by bytes; the table lists all
// "#log" in the address starts with log axes (a link can carry the view).
const state = {scale: /(^#|,)log(,|$)/.test(location.hash) ? "log" : "share", patchSet: S.default_patch_set};
const shortSet = key => key.replace(/-[0-9a-f]{8}$/, "");

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
