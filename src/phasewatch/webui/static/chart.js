// Charts as inline SVG, drawn here (no library, nothing from another site). Each chart is
// drawn at the width its element has, so text stays readable on a phone and a wall
// screen alike (drawOnResize redraws it when that width changes). Everything is styled
// by class in app.css: no inline style.

import { svg } from "./dom.js";
import { sig } from "./format.js";

const MARGIN = { left: 58, right: 14, bottom: 46 };

// Ticks at 1, 2 or 5 times a power of ten, about `count` of them over lo..hi.
export function niceTicks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const rough = span / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const error = rough / power;
  const step = (error >= 7.5 ? 10 : error >= 3.5 ? 5 : error >= 1.5 ? 2 : 1) * power;
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toFixed(10)));
  return ticks;
}

// An area fraction's axis: 0-100 % when the data spread wide, else fitted with padding,
// never beyond 0 or 100.
export function percentBounds(numbers) {
  const finite = numbers.filter((v) => v != null && Number.isFinite(v));
  if (!finite.length) return [0, 100];
  const lo = Math.max(0, Math.min(...finite));
  const hi = Math.min(100, Math.max(...finite));
  if (hi - lo > 50) return [0, 100];
  const pad = Math.max((hi - lo) * 0.15, 1);
  return [Math.max(0, lo - pad), Math.min(100, hi + pad)];
}

const LEGEND_ROW = 17;
const legendWidth = (text) => 30 + text.length * 7.4; // 12 px type

// Legend entries laid out in rows that fit `width`: [[entry, x], ...] per row.
function legendRows(entries, width) {
  const rows = [[]];
  let x = MARGIN.left;
  for (const entry of entries) {
    if (x + legendWidth(entry[1]) > width - MARGIN.right && rows[rows.length - 1].length) {
      rows.push([]);
      x = MARGIN.left;
    }
    rows[rows.length - 1].push([entry, x]);
    x += legendWidth(entry[1]);
  }
  return rows;
}

// Clear the chart and size it to its element; the plot area leaves room for the legend.
function frame(node, plotHeight, entries = []) {
  const width = Math.max(280, Math.round(node.getBoundingClientRect().width) || 640);
  const rows = legendRows(entries, width);
  const top = entries.length ? 12 + rows.length * LEGEND_ROW : 14;
  const height = plotHeight + top + MARGIN.bottom;
  node.replaceChildren();
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  node.setAttribute("height", height);
  const plot = { x0: MARGIN.left, x1: width - MARGIN.right, y0: height - MARGIN.bottom, y1: top };
  rows.forEach((row, r) => legend(node, row, 14 + r * LEGEND_ROW));
  return { width, height, plot };
}

function scale(domain, range) {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  return (v) => r0 + ((v - d0) * (r1 - r0)) / (d1 - d0 || 1);
}

function axes(node, plot, { xTicks, x, xLabel, yTicks, y, yLabel, yFormat = sig, xFormat = String }) {
  const group = svg("g", { class: "axis" });
  for (const t of yTicks) {
    group.append(svg("line", { class: "grid", x1: plot.x0, x2: plot.x1, y1: y(t), y2: y(t) }));
    group.append(svg("text", { x: plot.x0 - 6, y: y(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  for (const t of xTicks) {
    group.append(svg("line", { x1: x(t), x2: x(t), y1: plot.y0, y2: plot.y0 + 4 }));
    group.append(svg("text", { x: x(t), y: plot.y0 + 17, "text-anchor": "middle" }, xFormat(t)));
  }
  group.append(svg("line", { x1: plot.x0, x2: plot.x1, y1: plot.y0, y2: plot.y0 }));
  group.append(svg("line", { x1: plot.x0, x2: plot.x0, y1: plot.y0, y2: plot.y1 }));
  group.append(svg("text", { x: (plot.x0 + plot.x1) / 2, y: plot.y0 + 36, "text-anchor": "middle" }, xLabel));
  const yMid = (plot.y0 + plot.y1) / 2;
  group.append(svg("text", { x: 14, y: yMid, "text-anchor": "middle", transform: `rotate(-90 14 ${yMid})` }, yLabel));
  node.append(group);
}

function legend(node, row, y) {
  for (const [[cls, text], x] of row) {
    if (cls === "value") node.append(svg("circle", { class: "value", cx: x + 5, cy: y - 4, r: 4 }));
    else if (cls === "band") node.append(svg("rect", { class: "band", x, y: y - 10, width: 14, height: 10 }));
    else node.append(svg("line", { class: cls, x1: x, x2: x + 16, y1: y - 4, y2: y - 4 }));
    node.append(svg("text", { class: "title", x: x + 20, y }, text));
  }
}

const polyline = (points, cls) => svg("polyline", { class: cls, points: points.map((p) => p.join(",")).join(" ") });

// Area % per field with the running mean, its 95 % CI band and the target: the CI must
// come within +-target %RA of the mean (dashed).
export function trendChart(node, { values, ids, mean, ci95, targetRaPct, name }) {
  const { plot } = frame(node, 190, [["value", "per field"], ["mean", "running mean"], ["band", "95 % CI"],
    ["target", `±${sig(targetRaPct)} % of the mean (target)`]]);
  const n = values.length;
  const band = mean.map((m, i) => (ci95[i] == null ? [] : [m - ci95[i], m + ci95[i]])).flat();
  const target = mean.map((m) => [m * (1 - targetRaPct / 100), m * (1 + targetRaPct / 100)]).flat();
  const [lo, hi] = percentBounds([...values, ...band, ...target]);
  const xTicks = niceTicks(1, Math.max(n, 2), Math.min(n, 8)).filter((t) => Number.isInteger(t) && t >= 1 && t <= n);
  const x = scale(n === 1 ? [0, 2] : [1, n], [plot.x0 + 8, plot.x1 - 8]);
  const y = scale([lo, hi], [plot.y0, plot.y1]);
  axes(node, plot, { xTicks, x, xLabel: "field, in the order counted", yTicks: niceTicks(lo, hi), y,
    yLabel: `area % ${name}`, yFormat: (t) => `${sig(t)} %` });
  const withCi = ci95.map((ci, i) => [i, ci]).filter(([, ci]) => ci != null);
  if (withCi.length > 1) {
    const upper = withCi.map(([i, ci]) => [x(i + 1), y(Math.min(hi, mean[i] + ci))]);
    const lower = withCi.slice().reverse().map(([i, ci]) => [x(i + 1), y(Math.max(lo, mean[i] - ci))]);
    node.append(svg("polygon", { class: "band", points: [...upper, ...lower].map((p) => p.join(",")).join(" ") }));
    for (const sign of [-1, 1]) {
      const line = withCi.map(([i]) => [x(i + 1), y(Math.min(hi, Math.max(lo, mean[i] * (1 + (sign * targetRaPct) / 100))))]);
      node.append(polyline(line, "target"));
    }
  }
  node.append(polyline(mean.map((m, i) => [x(i + 1), y(m)]), "mean"));
  values.forEach((v, i) => {
    const dot = svg("a", { href: `/images/${ids[i]}` });
    dot.append(svg("circle", { class: "value", cx: x(i + 1), cy: y(v), r: 4 }));
    dot.append(svg("title", {}, `field ${i + 1} (#${ids[i]}): ${sig(v)} %`));
    node.append(dot);
  });
}

// The running relative accuracy (%RA = 95 % CI / mean) against the target line.
export function raChart(node, { ra, targetRaPct }) {
  const { plot } = frame(node, 130, [["mean", "%RA after each field"], ["target", `target ${sig(targetRaPct)} %`]]);
  const n = ra.length;
  const known = ra.filter((v) => v != null);
  const hi = Math.max(targetRaPct * 2.5, Math.min(Math.max(0, ...known) * 1.1, targetRaPct * 10));
  const x = scale(n === 1 ? [0, 2] : [1, n], [plot.x0 + 8, plot.x1 - 8]);
  const y = scale([0, hi], [plot.y0, plot.y1]);
  const xTicks = niceTicks(1, Math.max(n, 2), Math.min(n, 8)).filter((t) => Number.isInteger(t) && t >= 1 && t <= n);
  axes(node, plot, { xTicks, x, xLabel: "fields counted", yTicks: niceTicks(0, hi, 4), y, yLabel: "%RA",
    yFormat: (t) => `${sig(t)} %` });
  node.append(svg("line", { class: "target", x1: plot.x0, x2: plot.x1, y1: y(targetRaPct), y2: y(targetRaPct) }));
  const points = ra.map((v, i) => [i, v]).filter(([, v]) => v != null);
  node.append(polyline(points.map(([i, v]) => [x(i + 1), y(Math.min(v, hi))]), "mean"));
}

// Particle sizes: counts per ECD bin; the bins grow by sqrt(2), so each is drawn as wide.
export function histogramChart(node, { edges, counts, unit }) {
  const { plot } = frame(node, 160);
  const bins = counts.length;
  const top = Math.max(1, ...counts);
  const x = scale([0, bins], [plot.x0, plot.x1]);
  const y = scale([0, top * 1.08], [plot.y0, plot.y1]);
  const every = Math.ceil(bins / 8);
  const xTicks = edges.map((_, i) => i).filter((i) => i % every === 0);
  axes(node, plot, { xTicks, x, xLabel: `equivalent circle diameter (${unit})`,
    yTicks: niceTicks(0, top, 4).filter(Number.isInteger), y, yLabel: "particles", xFormat: (i) => sig(edges[i]) });
  counts.forEach((c, i) => {
    const bar = svg("rect", { class: "bar", x: x(i) + 1, width: Math.max(1, x(i + 1) - x(i) - 2), y: y(c),
      height: plot.y0 - y(c) });
    bar.append(svg("title", {}, `${sig(edges[i])}–${sig(edges[i + 1])} ${unit}: ${c}`));
    node.append(bar);
  });
}

// Means with their 95 % CI, one per specimen, side by side.
export function intervalChart(node, { items, unitLabel, percent }) {
  const { plot } = frame(node, 200);
  const ends = items.flatMap((it) => [it.mean, it.mean + (it.ci || 0), it.mean - (it.ci || 0)]);
  const bounds = percent ? percentBounds(ends) : [0, Math.max(1e-9, ...ends.filter((v) => v != null)) * 1.1];
  const x = scale([-0.5, items.length - 0.5], [plot.x0, plot.x1]);
  const y = scale(bounds, [plot.y0, plot.y1]);
  const short = (text) => (text.length > 18 ? `${text.slice(0, 17)}…` : text);
  axes(node, plot, { xTicks: items.map((_, i) => i), x, xLabel: "specimen", yTicks: niceTicks(...bounds), y,
    yLabel: unitLabel, xFormat: (i) => short(items[i].name) });
  items.forEach((it, i) => {
    if (it.mean == null) return;
    if (it.ci != null) {
      const [a, b] = [Math.max(bounds[0], it.mean - it.ci), Math.min(bounds[1], it.mean + it.ci)];
      node.append(svg("line", { class: "whisker", x1: x(i), x2: x(i), y1: y(a), y2: y(b) }));
      for (const v of [a, b]) node.append(svg("line", { class: "whisker", x1: x(i) - 6, x2: x(i) + 6, y1: y(v), y2: y(v) }));
    }
    const point = svg("circle", { class: "point", cx: x(i), cy: y(it.mean), r: 5 });
    point.append(svg("title", {}, `${it.name}: ${sig(it.mean)}${it.ci == null ? "" : ` ± ${sig(it.ci)}`} (n = ${it.n})`));
    node.append(point);
  });
}

// Draw now and again whenever the element's width changes (one observer for all charts).
const drawers = new WeakMap();
const observer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const drawer = drawers.get(entry.target);
    const width = Math.round(entry.contentRect.width);
    if (drawer && width !== drawer.width) {
      drawer.width = width;
      drawer.draw();
    }
  }
});

export function drawOnResize(node, draw) {
  const known = drawers.has(node);
  drawers.set(node, { draw, width: Math.round(node.getBoundingClientRect().width) });
  if (!known) observer.observe(node);
  draw();
}
