// Jobs: the caller's jobs (admins: any customer's, or everyone's), filtered, newest first, a
// page at a time (GET /jobs).
import { api, el, fmt, isoLocal, page, problem, query, start } from "./console.js";

const form = document.getElementById("filters");
const body = document.querySelector("#jobs tbody");
const more = document.getElementById("more");
let cursor = null;

function filters() {
  const data = new FormData(form);
  return {
    status: data.get("status"),
    model: (data.get("model") || "").trim(),
    from: isoLocal(data.get("from")),
    to: isoLocal(data.get("to")),
    customer_id: (data.get("customer_id") || "").trim(),
  };
}

function took(job) {
  if (!job.completed_at) return "—";
  return fmt.seconds((Date.parse(job.completed_at) - Date.parse(job.created_at)) / 1000);
}

function line(job) {
  const request = job.request || {};
  return el("tr", { dataset: { job: job.id, status: job.status } },
    el("td", {}, el("a", { href: `/console/jobs/${job.id}` }, job.id)),
    el("td", {}, job.customer_id || ""),
    el("td", {}, el("span", { class: `status ${job.status}` }, job.status)),
    el("td", {}, `${request.family || ""}/${request.model || ""}`),
    el("td", {}, fmt.time(job.created_at)),
    el("td", {}, took(job)),
    el("td", {}, job.usage ? fmt.number(job.usage.gpu_seconds, 4) : "—"),
    el("td", {}, job.usage ? fmt.money(job.usage.cost, job.usage.currency) : "—"));
}

async function load(reset) {
  if (reset) {
    cursor = null;
    body.replaceChildren();
  }
  const answer = await api("/jobs" + query({ ...filters(), after: cursor, limit: 50 }));
  body.append(...answer.data.map(line));
  if (!body.children.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 8 }, "no jobs match")));
  cursor = answer.next_after;
  more.hidden = !answer.has_more;
}

page(async () => {
  await start();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load(true).then(() => problem(null), problem);
  });
  more.addEventListener("click", () => load(false).then(() => problem(null), problem));
  await load(true);
});
