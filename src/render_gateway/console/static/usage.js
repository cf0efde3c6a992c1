// Usage: the caller's own usage and cost by model and day, and this month's budget
// (GET /usage); admins may name another customer.
import { api, facts, fmt, live, page, query, rows, start } from "./console.js";
import { lineChart } from "./chart.js";

async function refresh() {
  const range = Number(document.getElementById("range").value);
  const to = new Date();
  const from = new Date(to.getTime() - range * 1000);
  const customer = document.getElementById("customer").value.trim();
  const report = await api("/usage" + query({ from: from.toISOString(), to: to.toISOString(), group_by: "model,day", customer_id: customer }));
  const currency = report.currency;
  facts(document.getElementById("totals"), [
    ["customer", report.customer_id],
    ["requests", report.totals.requests],
    ["GPU-seconds billed", fmt.number(report.totals.gpu_seconds, 4)],
    ["cost", fmt.money(report.totals.cost, currency)],
    ["not yet counted", `${report.pending_records} records (${fmt.seconds(report.lag_seconds)} behind)`],
  ]);
  const budget = report.budget;
  facts(document.getElementById("budget"), [
    ["month", budget.month],
    ["spent", `${fmt.number(budget.spent_gpu_seconds, 4)} GPU-s · ${fmt.money(budget.spent_cost, currency)}`],
    ["reserved", `${fmt.number(budget.reserved_gpu_seconds, 4)} GPU-s`],
    ["limit", budget.limit_gpu_seconds === null && budget.limit_cost === null ? "none"
      : `${budget.limit_gpu_seconds ?? "—"} GPU-s · ${budget.limit_cost === null ? "—" : fmt.money(budget.limit_cost, currency)}`],
  ]);
  const byDay = new Map();
  for (const row of report.rows) byDay.set(row.day, (byDay.get(row.day) || 0) + row.cost);
  lineChart(document.getElementById("chart-daily"), [{ key: "cost", points: [...byDay].map(([day, cost]) => ({ x: Date.parse(day), y: cost })) }]);
  rows(document.getElementById("rows"), report.rows, (row) => [row.day, row.model, row.requests, fmt.number(row.gpu_seconds, 4), fmt.money(row.cost, currency)]);
}

page(async () => {
  await start();
  const timer = { id: live(refresh, 10000) };
  for (const id of ["range", "customer"]) {
    document.getElementById(id).addEventListener("change", () => {
      clearInterval(timer.id);
      timer.id = live(refresh, 10000);
    });
  }
});
