// Renders the training runs embedded in <script id="runs-data"> with the chart and table code of charts.js
// (inlined before this file): curves of every run overlaid, one colour per run. On <body>: data-rendered (charts
// drawn) and data-series (chart id -> the series it drew), which the browser test reads. Served by
// `blt dashboard RUN --serve`, the page re-reads data.json every `live` seconds and redraws.

let P = JSON.parse(document.getElementById("runs-data").textContent);
const LN2 = Math.log(2);
const hashState = key => (location.hash.match(new RegExp(`[#,]${key}=([\\w-]+)`)) || [])[1];
const state = {x: hashState("x") || "step", unit: hashState("unit") || "bpb", sampleStep: null, diffOnly: false};
const runColor = i => COLORS[i % COLORS.length];
const DASHES = [null, "6 4", "2 3", "10 3 2 3"];
const EVENT_COLORS = {checkpoint: "#9aa3b2", restart: "#d23b3b", "re-deal": "#a63ba0"};

// 1.2k, 3.4M, 5.6G ... for steps, bytes, FLOPs
function si(v) {
  const a = Math.abs(v);
  for (const [d, s] of [[1e18, "E"], [1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]])
    if (a >= d) return +(v / d).toPrecision(3) + s;
  return +v.toPrecision(3) + "";
}
const num = v => typeof v === "number" && isFinite(v);

// ---- the x axis: step, bytes seen, training FLOPs or wall time ----
function elapsedUnit() {
  const longest = Math.max(0, ...P.runs.map(r => r.records.length ? r.records[r.records.length - 1].time - r.records[0].time : 0));
  return longest >= 7200 ? [3600, "hours"] : longest >= 120 ? [60, "minutes"] : [1, "seconds"];
}
const X = {
  step: {label: "step", of: () => r => r.step, fmt: si, integer: true},
  bytes: {label: "bytes seen", of: () => r => r.bytes_seen, fmt: v => v ? fmtBytes(v) : "0"},
  flops: {label: "training FLOPs", of: () => r => r.flops_total, fmt: si},
  time: {label: "wall time", of: run => { const t0 = run.records.length ? run.records[0].time : 0, [u] = elapsedUnit();
    return r => num(r.time) ? (r.time - t0) / u : null; }, fmt: v => fmt(+v.toPrecision(3))},
};
const xLabel = () => state.x === "time" ? `wall time (${elapsedUnit()[1]})` : X[state.x].label;

// One series per run (and per key of ``keys``): the records where both x and y are numbers.
function seriesOf(key, scale = 1, opts = {}) {
  return P.runs.flatMap((run, i) => {
    const xOf = X[state.x].of(run);
    const points = run.records.filter(r => num(r[key]) && num(xOf(r)));
    if (!points.length) return [];
    return [{name: opts.name ? opts.name(run) : run.name, color: opts.color || runColor(i), dash: opts.dash ? opts.dash(i) : null,
             x: points.map(xOf), y: points.map(r => r[key] * scale), run: run.name}];
  });
}
const lossScale = () => state.unit === "nats" ? LN2 : 1;
const lossLabel = () => state.unit === "nats" ? "nats/byte" : "bits/byte";

const series = {}; // chart id -> names drawn (for the browser test)
function draw(id, list, opts, missing) {
  const host = document.getElementById(id);
  if (!list.length) {
    host.innerHTML = `<div class="note">${esc(missing || "not in these runs' metrics")}</div>`;
    series[id] = [];
    return 0;
  }
  chart(host, "xy", list, {xnice: true, xinteger: X[state.x].integer, legend: true, xlabel: xLabel(), xfmt: X[state.x].fmt, ...opts});
  const absent = P.runs.filter(run => !list.some(s => s.run === run.name)).map(run => run.name);
  if (absent.length) host.insertAdjacentHTML("beforeend", `<div class="note">not in the metrics of ${esc(absent.join(", "))}</div>`);
  series[id] = list.map(s => s.name);
  return 1;
}

// Restarts and re-deals as vertical lines at the x of their step (on the step axis: the step itself).
function eventLines(kinds) {
  return P.runs.flatMap(run => {
    const xOf = X[state.x].of(run);
    return run.events.filter(e => kinds.includes(e.kind)).map(e => {
      const at = run.records.find(r => r.step >= e.step);
      const x = state.x === "time" && num(e.time) ? xOf({time: e.time}) : at ? xOf(at) : null;
      return num(x) ? {x, color: EVENT_COLORS[e.kind], dash: e.kind === "checkpoint" ? "3 3" : null, kind: e.kind,
                       title: `${run.name}: ${e.label} (step ${e.step})`} : null;
    }).filter(Boolean);
  });
}

function sourcesOf(prefix) {
  const names = new Set();
  P.runs.forEach(run => run.records.forEach(r => Object.keys(r).forEach(k => { if (k.startsWith(prefix)) names.add(k.slice(prefix.length)); })));
  return [...names].sort();
}

function drawCharts() {
  const s = lossScale();
  const fitLoss = {fit: true, yfmt: v => fmt(v, 2)};
  let n = 0;
  n += draw("train-loss", seriesOf("bits_per_byte", s), {...fitLoss, vlines: eventLines(["restart", "re-deal"]),
    xlabel: `${xLabel()}; ${lossLabel()}`});
  n += draw("val-loss", seriesOf("val_bits_per_byte", s), {...fitLoss, xlabel: `${xLabel()}; ${lossLabel()}`},
    "no validation in these runs (val_shards or stream.validation_fraction)");
  const srcs = sourcesOf("val_bits_per_byte/");
  n += draw("val-sources", srcs.flatMap((src, k) => seriesOf("val_bits_per_byte/" + src, s,
    {name: run => `${run.name} · ${src}`, color: COLORS[(k + 3) % COLORS.length], dash: i => DASHES[i % DASHES.length]})),
    {...fitLoss, xlabel: `${xLabel()}; ${lossLabel()}`}, "no per-source validation (stream.validation_fraction > 0 with a mix)");
  n += draw("lr", seriesOf("lr"), {yfmt: v => v === 0 ? "0" : v.toExponential(1)});
  n += draw("bytes-per-s", seriesOf("bytes_per_s"), {yfmt: si});
  n += draw("patches-per-s", seriesOf("patches_per_s"), {yfmt: si});
  n += draw("mfu", seriesOf("mfu"), {yfmt: pct}, "no MFU in these runs' metrics (needs the FLOP accounting and a known peak)");
  n += draw("data-wait", seriesOf("data_wait_fraction"), {yfmt: v => +(v * 100).toPrecision(3) + "%"});
  n += draw("bytes-per-patch", seriesOf("bytes_per_patch"), {fit: true, yfmt: v => fmt(v, 2)});
  n += draw("patches-per-seq", seriesOf("patches_per_sequence"), {fit: true, yfmt: v => fmt(v, 1)});
  const mix = sourcesOf("mix_share/");
  const hlines = mix.flatMap((src, k) => P.runs.filter(run => src in (run.mix_targets || {}))
    .map(run => ({y: run.mix_targets[src], color: COLORS[(k + 3) % COLORS.length]})));
  n += draw("mix-shares", mix.flatMap((src, k) => seriesOf("mix_share/" + src, 1,
    {name: run => `${run.name} · ${src}`, color: COLORS[(k + 3) % COLORS.length], dash: i => DASHES[i % DASHES.length]})),
    {yfmt: pct, hlines}, "one source: no mix");
  n += drawTimeline();
  return n;
}

// Step against wall time, from every record as written: a restart's replayed steps show as a drop back.
function drawTimeline() {
  const [u, unit] = elapsedUnit();
  const list = P.runs.map((run, i) => {
    const t0 = run.log.length ? run.log[0].time : 0;
    const points = run.log.filter(r => num(r.time));
    return {name: run.name, color: runColor(i), x: points.map(r => (r.time - t0) / u), y: points.map(r => r.step)};
  }).filter(s => s.x.length);
  const vlines = P.runs.flatMap(run => {
    const t0 = run.log.length ? run.log[0].time : 0;
    return run.events.filter(e => num(e.time)).map(e => ({x: (e.time - t0) / u, color: EVENT_COLORS[e.kind], kind: e.kind,
      dash: e.kind === "checkpoint" ? "3 3" : null, width: e.kind === "checkpoint" ? 1 : 1.6, title: `${run.name}: ${e.label}`}));
  });
  const host = document.getElementById("timeline");
  if (!list.length) { host.innerHTML = '<div class="note">no timed records</div>'; series.timeline = []; return 0; }
  chart(host, "xy", list, {xnice: true, legend: true, xlabel: `wall time (${unit})`, xfmt: v => fmt(+v.toPrecision(3)), yfmt: si,
                           vlines, height: 220});
  series.timeline = list.map(s => s.name);
  return 1;
}

// ---- tables ----
function duration(seconds) {
  if (!num(seconds)) return "–";
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = Math.round(seconds % 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}
const last = (run, key) => { for (let i = run.records.length - 1; i >= 0; i--) if (num(run.records[i][key])) return run.records[i][key]; return null; };
const swatch = i => `<span class="swatch" style="background:${runColor(i)}"></span>`;

function drawTables() {
  ["runs", "events", "config"].forEach(id => { document.getElementById(id).innerHTML = ""; });
  const s = lossScale();
  table("runs", ["run", "step", `train ${lossLabel()}`, `~val ${lossLabel()}`, "~bytes seen", "~time", "~attempts", "~workers", "~checkpoints"],
    P.runs.map((run, i) => {
      const recs = run.records, lastRec = recs[recs.length - 1] || {};
      const attempts = new Set(run.log.map(r => r.attempt).filter(a => a !== null && a !== undefined)).size || 1;
      const workers = [...new Set(run.log.map(r => r.workers).filter(num))].join("→") || "–";
      const bpb = last(run, "bits_per_byte"), val = last(run, "val_bits_per_byte");
      return [{html: swatch(i) + esc(run.name) + `<div class="note">${esc(run.url)}</div>`, sort: run.name},
              {html: esc(fmt(lastRec.step ?? 0)) + (run.target_steps ? ` / ${esc(fmt(run.target_steps))}` : ""), sort: lastRec.step ?? 0},
              num(bpb) ? bpb * s : null, num(val) ? val * s : null,
              {html: num(lastRec.bytes_seen) ? esc(fmtBytes(lastRec.bytes_seen)) : "–", sort: lastRec.bytes_seen ?? 0},
              {html: esc(duration(recs.length ? lastRec.time - run.log[0].time : null)), sort: recs.length ? lastRec.time - run.log[0].time : 0},
              attempts, workers, run.checkpoints.length];
    }));
  const events = P.runs.flatMap((run, i) => run.events.map(e => [
    {html: swatch(i) + esc(run.name), sort: run.name}, e.kind, e.step,
    {html: esc(num(e.time) && run.log.length ? duration(e.time - run.log[0].time) : "–"), sort: e.time ?? 0}, e.label]));
  table("events", ["run", "event", "step", "~at", "~detail"], events.length ? events : [["–", "none", null, "", ""]], 200);
  drawConfig();
}

// Configuration: one column per run; rows where the runs differ are highlighted (or alone with "only what differs").
function drawConfig() {
  const host = document.getElementById("config");
  const keys = [...new Set(P.runs.flatMap(run => Object.keys(run.config)))].sort();
  const differs = k => new Set(P.runs.map(run => run.config[k] ?? "–")).size > 1;
  const rows = keys.filter(k => !state.diffOnly || differs(k));
  if (!keys.length) { host.innerHTML = '<div class="note">no configuration found (run_config.json or a checkpoint)</div>'; return; }
  host.innerHTML = `<table class="config"><thead><tr><th>setting</th>${P.runs.map((run, i) => `<th>${swatch(i)}${esc(run.name)}</th>`).join("")}</tr></thead><tbody>` +
    rows.map(k => `<tr class="${P.runs.length > 1 && differs(k) ? "diff" : ""}"><td>${esc(k).replace(/([._])/g, "$1<wbr>")}</td>` +
      P.runs.map(run => `<td>${esc(run.config[k] ?? "–")}</td>`).join("") + "</tr>").join("") + "</tbody></table>" +
    (P.runs.length > 1 ? `<div class="note">${keys.filter(differs).length} of ${keys.length} settings differ (highlighted)</div>` : "");
}

// ---- samples: per checkpoint step, one card per run, patch starts marked ----
function drawSamples() {
  const host = document.getElementById("samples"), select = document.getElementById("sample-step");
  const steps = [...new Set(P.runs.flatMap(run => run.samples.map(s => s.step)))].sort((a, b) => a - b);
  if (state.sampleStep === null || !steps.includes(state.sampleStep)) state.sampleStep = steps.length ? steps[steps.length - 1] : null;
  select.innerHTML = steps.map(s => `<option value="${s}"${s === state.sampleStep ? " selected" : ""}>step ${fmt(s)}</option>`).join("");
  host.innerHTML = "";
  if (!steps.length) {
    host.innerHTML = '<div class="panel"><div class="note">no samples yet (samples/step-N.json, written at checkpoints)</div></div>';
    return 0;
  }
  let n = 0;
  P.runs.forEach((run, i) => {
    const set = run.samples.find(s => s.step === state.sampleStep);
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.innerHTML = `<b>${swatch(i)}${esc(run.name)}</b><div class="note">step ${fmt(state.sampleStep)}` +
      (set ? ` · ${set.samples.length} prompt${set.samples.length === 1 ? "" : "s"}` : " · no samples at this step") + "</div>";
    (set ? set.samples : []).forEach(sample => { panel.appendChild(sampleDoc(sample)); n++; });
    host.appendChild(panel);
  });
  return n;
}

// One sample: the bytes of prompt + text cut at the patch lengths; a patch that spans the end of the prompt is
// split there (its second part has no start bar).
function sampleDoc(sample) {
  const doc = document.createElement("div");
  doc.className = "doc sample";
  const enc = new TextEncoder(), dec = new TextDecoder();
  const prompt = enc.encode(sample.prompt || ""), all = enc.encode((sample.prompt || "") + (sample.text || ""));
  const lens = sample.patch_lengths || [];
  if (lens.reduce((a, b) => a + b, 0) !== all.length) {
    doc.textContent = (sample.prompt || "") + (sample.text || "");
    doc.insertAdjacentHTML("afterbegin", '<div class="note">patch lengths do not cover the text: boundaries not shown</div>');
    return doc;
  }
  let pos = 0;
  const piece = (from, to, cls, title) => {
    const span = document.createElement("span");
    span.textContent = dec.decode(all.slice(from, to), {stream: true});
    span.className = cls;
    span.title = title;
    doc.appendChild(span);
  };
  lens.forEach(len => {
    const end = pos + len, title = `patch of ${len} bytes`;
    if (pos < prompt.length && end > prompt.length) {
      piece(pos, prompt.length, "prompt", title);
      piece(prompt.length, end, "cont", title);
    } else piece(pos, end, pos < prompt.length ? "prompt" : "", title);
    pos = end;
  });
  return doc;
}

// ---- page ----
function render() {
  Object.keys(series).forEach(k => delete series[k]);
  drawTables();
  const n = drawCharts() + drawSamples();
  document.body.dataset.rendered = String(n);
  document.body.dataset.series = JSON.stringify(series);
  document.getElementById("generated").textContent = P.generated;
  const hasFlops = P.runs.some(run => run.records.some(r => num(r.flops_total)));
  document.querySelector('input[name="x"][value="flops"]').disabled = !hasFlops;
  checkLayout();
}
const setHash = () => history.replaceState(null, "", `#x=${state.x},unit=${state.unit}`);
document.querySelectorAll('input[name="x"]').forEach(r => {
  r.checked = r.value === state.x;
  r.addEventListener("change", () => { state.x = r.value; setHash(); render(); });
});
document.querySelectorAll('input[name="unit"]').forEach(r => {
  r.checked = r.value === state.unit;
  r.addEventListener("change", () => { state.unit = r.value; setHash(); render(); });
});
document.getElementById("diff-only").addEventListener("change", e => { state.diffOnly = e.target.checked; render(); });
document.getElementById("sample-step").addEventListener("change", e => { state.sampleStep = +e.target.value; render(); });
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(render, 120); });
if (P.live > 0) { // served: redraw from the runs as they are now
  document.getElementById("live").textContent = ` · live, refreshed every ${P.live}s`;
  setInterval(() => fetch("data.json", {cache: "no-store"}).then(r => r.json()).then(d => { P = d; render(); }).catch(() => {}), P.live * 1000);
}
render();
