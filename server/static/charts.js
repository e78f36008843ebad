// Minimal hand-written SVG line charts for the dashboard (no library, no CDN).
// lineChart(svg, {series: [{name, color, points: [[x, y], ...]}], xLabel, yLabel,
//                 yMin, yMax, yFormat}) redraws `svg` from scratch.
"use strict";

const FedkbCharts = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 520, H = 240, M = { left: 48, right: 12, top: 26, bottom: 34 };

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  // About `n` round tick values covering [lo, hi].
  function ticks(lo, hi, n, integer) {
    if (hi <= lo) return [lo];
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toFixed(6));
    return out;
  }

  function lineChart(svg, opts) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    const series = opts.series.filter((s) => s.points.length > 0);
    const all = series.flatMap((s) => s.points);
    if (all.length === 0) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg,
         opts.empty || "no data yet");
      svg.dataset.points = "0";
      return;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    const y0 = opts.yMin !== undefined ? opts.yMin : Math.min(0, ...ys);
    let y1 = opts.yMax !== undefined ? opts.yMax : Math.max(...ys);
    if (y1 <= y0) y1 = y0 + 1;
    const px = (x) => M.left + (x - x0) / (x1 - x0) * (W - M.left - M.right);
    const py = (y) => H - M.bottom - (y - y0) / (y1 - y0) * (H - M.top - M.bottom);
    const fmt = opts.yFormat || ((v) => String(v));

    const axes = el("g", { class: "axes" }, svg);
    for (const t of ticks(y0, y1, 4, false)) {
      el("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t), class: "grid" }, axes);
      el("text", { x: M.left - 6, y: py(t) + 4, "text-anchor": "end" }, axes, fmt(t));
    }
    for (const t of ticks(x0, x1, 6, true)) {
      el("text", { x: px(t), y: H - M.bottom + 16, "text-anchor": "middle" }, axes, String(t));
    }
    el("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom,
                 class: "axis" }, axes);
    el("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }, axes);
    if (opts.xLabel) {
      el("text", { x: W - M.right, y: H - 4, "text-anchor": "end", class: "label" }, axes,
         opts.xLabel);
    }

    let lx = M.left;
    series.forEach((s) => {
      const g = el("g", { class: "series", "data-series": s.name }, svg);
      const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
      el("polyline", { points: pts.map((p) => `${px(p[0])},${py(p[1])}`).join(" "),
                       fill: "none", stroke: s.color, "stroke-width": 2 }, g);
      pts.forEach((p) => {
        const c = el("circle", { cx: px(p[0]), cy: py(p[1]), r: 3, fill: s.color,
                                 class: "point" }, g);
        el("title", {}, c, `${s.name}: ${fmt(p[1])} at ${p[0]}`);
      });
      el("rect", { x: lx, y: 8, width: 10, height: 10, fill: s.color }, svg);
      const label = el("text", { x: lx + 14, y: 17, class: "legend" }, svg, s.name);
      lx += 24 + 7 * s.name.length;
      label.setAttribute("data-series", s.name);
    });
    svg.dataset.points = String(all.length);
  }

  return { lineChart };
})();
