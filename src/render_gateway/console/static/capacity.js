// Capacity (admins): the queueing-theory planner over observed traffic (GET /capacity), each
// figure with the formula it came from, and predicted wait against the number of GPUs.
import { api, el, fmt, page, problem, query, start } from "./console.js";
import { lineChart } from "./chart.js";

const form = document.getElementById("inputs");

function card(model) {
  const chart = el("div", { class: "chart", dataset: { model: model.model } });
  const figures = el("table", { class: "wide figures" },
    el("thead", {}, el("tr", {}, el("th", {}, "figure"), el("th", {}, "value"), el("th", {}, "formula"))),
    el("tbody", {}, ...Object.entries(model.figures || {}).map(([name, f]) => el("tr", { dataset: { figure: name } },
      el("td", {}, name.replaceAll("_", " ")),
      el("td", { dataset: { value: String(f.value) } }, f.value === null ? "undefined (unstable)" : fmt.number(f.value, 4) + (f.unit ? " " + f.unit : "")),
      el("td", {}, el("code", {}, f.formula || ""))))));
  const warnings = el("ul", { class: "warnings" }, ...(model.warnings || []).map((w) => el("li", { class: "bad" }, w)));
  const node = el("section", { class: "card", dataset: { model: model.model } }, el("h2", {}, `${model.model} · ${model.requests} requests · ${model.servers} GPU slots · ${model.planning_model || "no model"}`), figures, warnings, el("h3", {}, "Predicted queue wait vs GPUs"), chart);
  const series = model.by_servers || [];
  queueMicrotask(() => lineChart(chart, [
    { key: "mean wait (s)", points: series.filter((p) => Number.isFinite(p.mean_wait_s)).map((p) => ({ x: p.servers, y: p.mean_wait_s })) },
    { key: "p95 wait (s)", points: series.filter((p) => Number.isFinite(p.p95_wait_s)).map((p) => ({ x: p.servers, y: p.p95_wait_s })) },
  ], { xKind: "count", xLabel: "GPUs" }));
  return node;
}

async function plan() {
  const data = new FormData(form);
  const answer = await api("/capacity" + query({ window: data.get("window"), target_wait: data.get("target_wait") }));
  const box = document.getElementById("models");
  box.replaceChildren(...answer.models.map(card));
  if (!answer.models.length) box.append(el("p", { class: "hint" }, "no traffic in this window"));
}

page(async () => {
  await start({ adminOnly: true });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    plan().then(() => problem(null), problem);
  });
  await plan();
});
