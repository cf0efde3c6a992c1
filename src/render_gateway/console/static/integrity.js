// Billing integrity: the audit log's size and last signed checkpoint (its signature checked
// here, in the browser), the last offline verification of the whole log (admins may run one),
// and the reconciliation runs with the requests they named.
import { api, el, facts, fmt, live, page, problem, rows, start } from "./console.js";
import { verifyCheckpoint } from "./proof.js";

let admin = false;

function named(run) {
  const lists = [
    ["missing in hot", run.missing_in_hot],
    ["missing in cold", run.missing_in_cold],
    ["counted twice", run.duplicated_in_hot],
    ["GPU-s differ", (run.gpu_mismatches || []).map((m) => m.request_id)],
    ["unreadable batches", run.unreadable_batches],
  ];
  const items = lists.filter(([, ids]) => ids && ids.length).flatMap(([what, ids]) => ids.map((id) => el("li", {}, `${what}: `, el("code", {}, id))));
  return items.length ? el("ul", { class: "compact" }, ...items) : "none";
}

function showVerification(run) {
  facts(document.getElementById("verification"), run ? [
    ["result", el("span", { class: run.ok ? "ok" : "bad", id: "verification-ok", dataset: { ok: String(run.ok) } }, run.ok ? "verified" : "FAILED")],
    ["when", fmt.time(run.finished_at)],
    ["records", run.records],
    ["batches", run.batches],
    ["GPU-seconds", fmt.number(run.gpu_seconds, 4)],
  ] : [["result", "never run"]]);
  document.getElementById("findings").replaceChildren(...(run ? run.findings : []).map((f) => el("li", { class: "bad" }, el("code", {}, f.where), ` ${f.what}`)));
}

async function refresh() {
  const status = await api("/audit/status");
  const checkpoint = status.checkpoint;
  facts(document.getElementById("log"), [
    ["log key", el("code", { id: "log-key" }, status.log_public_key)],
    ["batches in the log", status.log_size],
    ["attested since start", status.attested_since_start],
    ["waiting for a batch", status.pending_records],
    ["checkpoint size", checkpoint ? checkpoint.size : "none yet"],
    ["checkpoint root", checkpoint ? el("code", {}, checkpoint.root_hash) : "—"],
    ["gateway's signature check", checkpoint ? (checkpoint.signature_ok ? "ok" : "FAILED") : "—"],
  ]);
  const steps = document.getElementById("checkpoint-check");
  if (checkpoint) {
    const result = await verifyCheckpoint(checkpoint.note, status.log_public_key);
    steps.dataset.ok = String(result.ok);
    steps.replaceChildren(el("li", { class: result.ok ? "ok" : "bad", id: "checkpoint-verdict" },
      result.ok ? `✓ checkpoint signature verified in this browser (size ${result.checkpoint.size})` : `✗ checkpoint signature: ${result.error}`));
  }
  if (!admin) return;
  const [verifications, reconciliations] = await Promise.all([api("/audit/verifications?limit=1"), api("/reconciliations?limit=20")]);
  showVerification(verifications.runs[0] || status.last_verification);
  rows(document.getElementById("runs"), reconciliations.runs, (run) => [
    fmt.time(run.started_at),
    `${fmt.time(run.window_start)} → ${fmt.time(run.window_end)}`,
    el("span", { class: run.status === "reconciled" ? "ok" : "bad", dataset: { status: run.status } }, run.status),
    `${run.hot_requests} / ${run.cold_requests}`,
    `${fmt.number(run.hot_gpu_seconds, 4)} / ${fmt.number(run.cold_gpu_seconds, 4)}`,
    named(run),
  ]);
}

page(async () => {
  admin = (await start()).admin;
  const button = document.getElementById("verify-now");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      showVerification(await api("/audit/verifications", { method: "POST", body: {} }));
      problem(null);
    } catch (error) {
      problem(error);
    } finally {
      button.disabled = false;
    }
  });
  live(refresh, 10000);
});
