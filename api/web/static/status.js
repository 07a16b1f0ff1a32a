// The status view: workers, queues and recent throughput from GET /v1/status, polled every 2 s
// while the page is visible (so the chart has history when the tab is opened).

import { getJson } from "./api.js";
import { COLORS, drawChart } from "./chart.js";

const POLL_MS = 2000;
const SPAN_S = 120; // the chart's window, once that much has been seen
const SMOOTH = 3; // readings per rate (6 s)
const $ = (id) => document.getElementById(id);
const readings = []; // {time, generated: {model: total}} of the last SPAN_S seconds
const colors = new Map(); // model → its line's colour, stable while the page is open
let timer = null;

export function startStatus() {
  document.addEventListener("visibilitychange", () => (document.hidden ? pause() : poll()));
  window.addEventListener("resize", drawThroughput);
  poll();
}

function pause() {
  clearTimeout(timer);
  timer = null;
}

async function poll() {
  pause();
  try {
    const status = await getJson("/v1/status");
    readings.push({ time: status.time, generated: status.tokens.generated });
    while (readings.length && status.time - readings[0].time > SPAN_S + (SMOOTH * POLL_MS) / 1000) readings.shift();
    render(status);
    $("status-error").hidden = true;
  } catch (err) {
    $("status-error").textContent = err.message;
    $("status-error").hidden = false;
  }
  if (!document.hidden) timer = setTimeout(poll, POLL_MS);
}

/**
 * Per model, tokens/s over the last few readings (a short moving window: requests finish in bursts,
 * one 2 s step alone zig-zags). A restarted API's counters start at 0 again: no negative rates.
 */
function rates() {
  const series = new Map();
  for (let k = 1; k < readings.length; k++) {
    const a = readings[Math.max(0, k - SMOOTH)], b = readings[k];
    const dt = b.time - a.time;
    if (dt <= 0) continue;
    for (const model of new Set([...Object.keys(a.generated), ...Object.keys(b.generated)])) {
      const delta = Math.max(0, (b.generated[model] ?? 0) - (a.generated[model] ?? 0));
      if (!series.has(model)) series.set(model, []);
      series.get(model).push([b.time, delta / dt]);
    }
  }
  return series;
}

function colorOf(model) {
  if (!colors.has(model)) colors.set(model, COLORS[colors.size % COLORS.length]);
  return colors.get(model);
}

export function drawThroughput() {
  const series = rates();
  const now = readings.length ? readings[readings.length - 1].time : 0;
  // Until two minutes have been seen, the x axis spans what has: the lines fill the chart at once.
  const span = Math.min(SPAN_S, Math.max(10, now - (readings[0]?.time ?? now)));
  drawChart($("throughput"), [...series].map(([model, points]) => ({ color: colorOf(model), points })),
    { now, span, unit: "tokens/s" });
  const legend = $("throughput-legend");
  legend.replaceChildren(...[...series.keys()].map((model) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colorOf(model);
    const last = series.get(model).at(-1)?.[1] ?? 0;
    item.append(swatch, `${model} ${last.toFixed(1)}`);
    return item;
  }));
  if (!series.size) legend.textContent = readings.length < 2 ? "Collecting…" : "No generations finished yet.";
  return series;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function card(label, value) {
  const div = document.createElement("div");
  div.className = "card";
  const b = document.createElement("b");
  b.textContent = value;
  const span = document.createElement("span");
  span.textContent = label;
  div.append(b, span);
  return div;
}

function render(status) {
  const { workers, queues } = status;
  const series = drawThroughput();
  const now = [...series.values()].reduce((sum, pts) => sum + (pts.at(-1)?.[1] ?? 0), 0);
  const sum = (rows, key) => rows.reduce((n, r) => n + r[key], 0);
  $("summary").replaceChildren(
    card("workers ready", `${workers.filter((w) => w.state === "ready").length} / ${workers.length}`),
    card("running sequences", sum(workers, "running")),
    card("waiting sequences", sum(workers, "waiting")),
    card("queued jobs", sum(queues, "depth")),
    card("tokens/s now", now.toFixed(1)),
  );
  $("workers").tBodies[0].replaceChildren(...workers.map((w) => {
    const tr = document.createElement("tr");
    const state = cell(w.state, `state ${w.state}`);
    if (w.error) state.title = w.error;
    tr.append(cell(w.name), cell(w.model), cell(w.kind || "—"), state, cell(w.device || "—"),
      cell(w.dtype || "—"), cell(w.running, "num"), cell(w.waiting, "num"));
    return tr;
  }));
  $("queues").tBodies[0].replaceChildren(...queues.map((q) => {
    const tr = document.createElement("tr");
    const c = q.classes || {};
    tr.append(cell(q.model), cell(q.depth, "num"), cell(c.interactive ?? 0, "num"), cell(c.background ?? 0, "num"),
      cell(c.batch ?? 0, "num"));
    return tr;
  }));
  $("batches").tBodies[0].replaceChildren(...(status.batches || []).map((b) => {
    const tr = document.createElement("tr");
    const n = b.request_counts;
    tr.append(cell(b.id), cell(b.status, `state ${b.status}`), cell(b.endpoint), cell(b.model || "—"),
      cell(n.completed + n.failed, "num"), cell(n.failed, "num"), cell(n.total, "num"));
    return tr;
  }));
}
