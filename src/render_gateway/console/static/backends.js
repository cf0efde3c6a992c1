// Backends (admins): health, breaker, load, device, node key and recent failures (GET /backends).
import { api, el, fmt, live, page, rows, start } from "./console.js";

async function refresh() {
  const { backends } = await api("/backends");
  rows(document.getElementById("backends"), backends, (b) => [
    el("td", {}, el("strong", {}, b.id), el("div", { class: "hint" }, `${b.type} · ${b.endpoint}`)),
    el("td", {}, el("span", { class: b.healthy ? "ok" : "bad", dataset: { healthy: String(b.healthy) } }, b.healthy ? "healthy" : "down")),
    el("td", {}, el("span", { class: b.breaker.state === "closed" ? "ok" : "bad", dataset: { breaker: b.breaker.state } }, b.breaker.state),
      el("div", { class: "hint" }, `${b.breaker.failures}/${b.breaker.calls} failed${b.breaker.opened_at ? " · opened " + fmt.time(b.breaker.opened_at) : ""}`)),
    `${b.in_flight} / ${b.capacity}`,
    `${b.served} / ${b.failed}`,
    b.models.join(", "),
    el("code", {}, b.device_uuid || "—"),
    el("code", {}, b.node_key_id || "—"),
    el("td", {}, el("ul", { class: "compact" }, ...(b.recent_failures || []).map((f) => el("li", {}, `${fmt.time(f.at)} `, el("code", {}, f.error_code), ` ${f.request_id || ""}`)))),
  ]);
}

page(async () => {
  await start({ adminOnly: true });
  live(refresh);
});
