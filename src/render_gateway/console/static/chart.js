// A small SVG line chart: a few series over a shared x axis (time or a count), axes with
// ticks, a legend, and every plotted value kept on its point (data-series, data-x, data-y) and
// in a table under the chart, so what is drawn can be read back and checked.

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
const WIDTH = 560;
const HEIGHT = 220;
const PAD = { left: 56, right: 12, top: 10, bottom: 28 };

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function niceTicks(low, high, count = 4) {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 5, 10].map((m) => m * step).find((s) => (high - low) / s <= count) || step * 10;
  const ticks = [];
  for (let value = Math.ceil(low / unit) * unit; value <= high + unit * 1e-9; value += unit) ticks.push(value);
  return ticks;
}

const DAY_MS = 86400000;

// span: the x range drawn, so a month's axis shows dates and an hour's the time (UTC).
function label(value, kind, span = 0) {
  if (kind === "time") {
    const iso = new Date(value).toISOString();
    if (span > 3 * DAY_MS) return iso.slice(5, 10);
    if (span > DAY_MS / 2) return `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
    return iso.slice(11, 16);
  }
  return Math.abs(value) >= 1000 ? value.toExponential(1) : String(Number(value.toPrecision(3)));
}

// series: [{key, points: [{x, y}]}] with x a number (ms since the epoch for "time").
// xDomain: the x range to draw (a time chart shows the whole window asked for, not just the
// buckets that had traffic).
export function lineChart(container, series, { xKind = "time", yLabel = "", xLabel = "", xDomain = null } = {}) {
  const points = series.flatMap((s) => s.points);
  container.replaceChildren();
  container.dataset.series = String(series.length);
  if (!points.length) {
    container.append(Object.assign(document.createElement("p"), { className: "hint", textContent: "no data in this range" }));
    return;
  }
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  let [x0, x1] = xDomain || [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const y1 = Math.max(...ys, 0) * 1.1 || 1;
  const y0 = Math.min(0, ...ys);
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
  const sy = (y) => HEIGHT - PAD.bottom - ((y - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": yLabel });
  for (const tick of niceTicks(y0, y1)) {
    root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: sy(tick), y2: sy(tick), class: "grid" }));
    const text = svg("text", { x: PAD.left - 6, y: sy(tick) + 4, "text-anchor": "end", class: "tick" });
    text.textContent = label(tick, "number");
    root.append(text);
  }
  const xTicks = xKind === "time" ? [x0, (x0 + x1) / 2, x1] : niceTicks(x0, x1, 6);
  for (const tick of xTicks) {
    // The ends' labels lean inwards so that neither is cut off at the chart's edge.
    const anchor = tick === x0 ? "start" : tick === x1 ? "end" : "middle";
    const text = svg("text", { x: sx(tick), y: HEIGHT - 8, "text-anchor": anchor, class: "tick" });
    text.textContent = label(tick, xKind, x1 - x0);
    root.append(text);
  }
  if (xLabel) {
    const text = svg("text", { x: WIDTH - PAD.right, y: HEIGHT - PAD.bottom - 6, "text-anchor": "end", class: "axis" });
    text.textContent = `${xLabel} →`;
    root.append(text);
  }
  series.forEach((s, index) => {
    const colour = COLOURS[index % COLOURS.length];
    const sorted = [...s.points].sort((a, b) => a.x - b.x);
    const path = sorted.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
    root.append(svg("path", { d: path, stroke: colour, fill: "none", "stroke-width": 2, class: "line" }));
    for (const p of sorted) {
      const dot = svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5, fill: colour, class: "point" });
      dot.dataset.series = s.key;
      dot.dataset.x = String(p.x);
      dot.dataset.y = String(p.y);
      const title = svg("title");
      title.textContent = `${s.key}: ${Number(p.y.toPrecision(6))} at ${label(p.x, xKind)}`;
      dot.append(title);
      root.append(dot);
    }
  });
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, index) => {
    const item = document.createElement("li");
    item.style.setProperty("--colour", COLOURS[index % COLOURS.length]);
    item.textContent = s.key;
    legend.append(item);
  });
  container.append(root, legend);
}
