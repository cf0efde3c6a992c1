// One job: its state, timeline (GET /jobs/{id}/timeline), output, usage record
// (GET /usage/records?job_id=) and its audit proof (GET /audit/proofs/{request_id}), checked
// here in the browser by proof.js — or offline with the CLI line shown.
import { ApiFailure, api, blob, el, facts, fmt, page, problem, query, start } from "./console.js";
import { verifyBundle } from "./proof.js";

const jobId = location.pathname.split("/").pop();
const TERMINAL = new Set(["complete", "error", "cancelled"]);
let requestId = null;
let shownOutput = null;

function showState(job) {
  document.querySelector("h1").textContent = `Job ${job.id}`;
  const request = job.request || {};
  facts(document.getElementById("state"), [
    ["status", el("span", { class: `status ${job.status}`, id: "job-status" }, job.status)],
    ["model", `${request.modality || ""} ${request.family || ""}/${request.model || ""} ${request.task || ""}`],
    ["progress", `${Math.round((job.progress || 0) * 100)} %`],
    ["position", job.position ?? "—"],
    ["created", fmt.time(job.created_at)],
    ["started", fmt.time(job.started_at)],
    ["completed", fmt.time(job.completed_at)],
    ["seed", job.seed ?? "—"],
    ["error", job.error ? `${job.error.code}: ${job.error.message}` : "—"],
  ]);
}

async function showTimeline() {
  const { events, source } = await api(`/jobs/${jobId}/timeline`);
  const list = document.getElementById("timeline");
  list.dataset.source = source;
  list.replaceChildren(...events.map((event) => {
    const data = event.data || {};
    const detail = event.type === "progress" && data.progress !== undefined ? ` ${Math.round(data.progress * 100)} %` : "";
    return el("li", { dataset: { type: event.type } }, el("strong", {}, event.type), detail, el("span", { class: "hint" }, " " + fmt.time(event.at)));
  }));
}

async function showOutput(job) {
  const box = document.getElementById("output");
  if (!job.output || shownOutput === job.output) {
    if (!job.output) box.textContent = TERMINAL.has(job.status) ? "no output" : "not yet";
    return;
  }
  shownOutput = job.output;
  const bytes = await blob(job.output);
  const url = URL.createObjectURL(bytes);
  const media = bytes.type.startsWith("video/")
    ? el("video", { src: url, controls: true, id: "output-media" })
    : el("img", { src: url, alt: "the job's output", id: "output-media" });
  box.replaceChildren(media, el("div", { class: "hint" }, `${bytes.type}, ${bytes.size} bytes`));
}

async function showUsage() {
  const { records } = await api("/usage/records" + query({ job_id: jobId }));
  const record = records[records.length - 1];
  if (!record) {
    facts(document.getElementById("usage"), [["record", "not in the hot path yet"]]);
    return false;
  }
  requestId = record.request_id;
  facts(document.getElementById("usage"), [
    ["request", el("code", { id: "request-id" }, record.request_id)],
    ["status", record.status],
    ["GPU-seconds", fmt.number(record.gpu_seconds, 6)],
    ["cost", fmt.money(record.cost, record.currency)],
    ["queued", fmt.ms(record.queue_time_ms)],
    ["inference", fmt.ms(record.inference_time_ms)],
    ["total", fmt.ms(record.total_time_ms)],
    ["backend", record.backend || "—"],
    ["device", record.device_uuid || "—"],
    ["metered / billable", `${record.metered} / ${record.billable}`],
  ]);
  document.getElementById("proof-cli").textContent =
    `render-gateway audit prove ${record.request_id} > proof.json && render-gateway audit verify-proof proof.json --pubkey pubkey.txt`;
  document.getElementById("fetch-proof").disabled = false;
  return true;
}

async function logKey() {
  const pinned = document.getElementById("log-key").value.trim();
  if (pinned) return pinned;
  return (await api("/audit/status")).log_public_key;
}

async function check() {
  const list = document.getElementById("proof-result");
  list.replaceChildren();
  delete list.dataset.ok;
  let bundle;
  try {
    bundle = JSON.parse(document.getElementById("proof-json").value);
  } catch (error) {
    list.dataset.ok = "false";
    list.append(el("li", { class: "bad" }, `not JSON: ${error.message}`));
    return;
  }
  const result = await verifyBundle(bundle, { logKey: await logKey() });
  list.replaceChildren(...result.steps.map((step) =>
    el("li", { class: step.ok ? "ok" : "bad", dataset: { step: step.name, ok: String(step.ok) } }, `${step.ok ? "✓" : "✗"} ${step.name}`, step.detail ? el("span", { class: "hint" }, ` — ${step.detail}`) : null)));
  if (result.error) list.append(el("li", { class: "bad", id: "proof-error" }, result.error));
  list.append(el("li", { class: result.ok ? "ok" : "bad", id: "proof-verdict" }, result.ok ? "the proof verifies" : "the proof does NOT verify"));
  list.dataset.ok = String(result.ok);
}

async function fetchProof() {
  const bundle = await api(`/audit/proofs/${encodeURIComponent(requestId)}`);
  document.getElementById("proof-json").value = JSON.stringify(bundle, null, 2);
  document.getElementById("check-proof").disabled = false;
  await check();
}

page(async () => {
  await start();
  document.getElementById("fetch-proof").disabled = true;
  document.getElementById("fetch-proof").addEventListener("click", () => fetchProof().then(() => problem(null), problem));
  document.getElementById("check-proof").addEventListener("click", () => check().then(() => problem(null), problem));
  let job;
  try {
    job = await api(`/jobs/${jobId}`);
  } catch (error) {
    if (error instanceof ApiFailure && error.status === 404) {
      document.querySelector("h1").textContent = "No such job";
    }
    throw error;
  }
  let haveUsage = false;
  for (;;) {
    showState(job);
    await showTimeline();
    await showOutput(job);
    if (TERMINAL.has(job.status) && !haveUsage) haveUsage = await showUsage();
    if (TERMINAL.has(job.status) && haveUsage) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    job = await api(`/jobs/${jobId}`);
  }
  document.body.dataset.loaded = "true";
});
