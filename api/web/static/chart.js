// A small line chart drawn on a canvas (no chart library: the page loads nothing from elsewhere).

export const COLORS = ["#2563eb", "#db2777", "#16a34a", "#ea580c", "#7c3aed", "#0891b2", "#ca8a04"];

/** A round upper bound for the y axis: 1, 2 or 5 times a power of ten. */
function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((k) => k * p).find((k) => k >= v);
}

/**
 * series: [{color, points: [[t, value], ...]}]; the x axis spans `span` seconds ending at `now`.
 * Drawn at the canvas's CSS size times the device pixel ratio, so it stays sharp.
 */
export function drawChart(canvas, series, { now, span, unit }) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return; // not laid out (its tab is hidden): drawn when shown
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);

  const css = getComputedStyle(canvas);
  const ink = css.getPropertyValue("--muted").trim() || "#6b7280";
  const rule = css.getPropertyValue("--rule").trim() || "#e5e7eb";
  const left = 48, right = 8, top = 8, bottom = 22;
  const w = width - left - right, h = height - top - bottom;
  const top_ = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  const x = (t) => left + w * (1 - (now - t) / span);
  const y = (v) => top + h * (1 - v / top_);

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = ink;
  g.strokeStyle = rule;
  g.lineWidth = 1;
  g.textBaseline = "middle";
  g.textAlign = "right";
  for (let k = 0; k <= 4; k++) {
    const v = (top_ * k) / 4;
    const yy = Math.round(y(v)) + 0.5;
    g.beginPath();
    g.moveTo(left, yy);
    g.lineTo(left + w, yy);
    g.stroke();
    g.fillText(`${+v.toFixed(1)}`, left - 6, yy);
  }
  g.textBaseline = "top";
  g.textAlign = "left";
  g.fillText(span >= 90 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`, left, top + h + 6);
  g.textAlign = "right";
  g.fillText(`now · ${unit}`, left + w, top + h + 6);

  g.lineWidth = 2;
  g.lineJoin = "round";
  for (const s of series) {
    const pts = s.points.filter((p) => now - p[0] <= span);
    if (!pts.length) continue;
    g.strokeStyle = s.color;
    g.beginPath();
    pts.forEach(([t, v], k) => (k ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
  }
}
