// Overview (admins): requests/s, GPU-seconds/s and cost over time from the hot path's rollups
// (GET /usage/series), queue depth and oldest wait per lane (GET /queue/stats), latency
// quantiles and errors by code (GET /usage/dashboard); refreshed every few seconds.
import { api, el, fmt, live, page, query, rows, start } from "./console.js";
import { lineChart } from "./chart.js";

const BUCKET_SECONDS = { minute: 60, hour: 3600, day: 86400 };

function window_() {
  const range = Number(document.getElementById("range").value);
  const to = new Date();
  const from = new Date(to.getTime() - range * 1000);
  return { from: from.toISOString(), to: to.toISOString() };
}

function plot(id, answer, value) {
  const seconds = BUCKET_SECONDS[answer.bucket];
  const series = answer.series;
  lineChart(
    document.getElementById(id),
    series.map((s) => ({
      key: s.key,
      points: s.points.map((p) => ({ x: Date.parse(p.t), y: value(p, seconds) })),
    })),
    { yLabel: id, xLabel: "", xDomain: [Date.parse(answer.from), Date.parse(answer.to)] },
  );
}

async function refresh() {
  const range = window_();
  const group = document.getElementById("group").value;
  const [series, dashboard, queue] = await Promise.all([
    api("/usage/series" + query({ ...range, group_by: group })),
    api("/usage/dashboard" + query(range)),
    api("/queue/stats"),
  ]);
  for (const id of ["chart-requests", "chart-gpu", "chart-cost"]) {
    Object.assign(document.getElementById(id).dataset, { from: series.from, to: series.to, bucket: series.bucket, group: series.group_by });
  }
  plot("chart-requests", series, (p, s) => p.requests / s);
  plot("chart-gpu", series, (p, s) => p.gpu_seconds / s);
  plot("chart-cost", series, (p) => p.cost);
  rows(document.getElementById("queue"), queue.lanes, (lane) => [lane.lane, lane.depth, fmt.seconds(lane.oldest_wait_seconds)]);
  document.getElementById("queue-running").textContent = `${queue.running} running, ${queue.queued} queued`;
  rows(document.getElementById("latency"), dashboard.latency, (row) => [row.model_name, fmt.ms(row.p50_ms), fmt.ms(row.p95_ms), fmt.ms(row.p99_ms), row.count]);
  rows(document.getElementById("errors"), dashboard.errors_by_code || [], (row) => [el("code", {}, row.error_code), row.model_name, row.count]);
}

page(async () => {
  await start({ adminOnly: true });
  const timer = { id: live(refresh) };
  for (const id of ["range", "group"]) {
    document.getElementById(id).addEventListener("change", () => {
      clearInterval(timer.id);
      timer.id = live(refresh);
    });
  }
});
