// What every console page shares: the credential, calls to the API, the navigation and small
// DOM and formatting helpers. The credential lives in this tab's sessionStorage only and goes
// to this origin's API as a bearer token; nothing is sent anywhere else (the page's CSP).

const TOKEN = "render.console.token";

export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function signIn(value) {
  sessionStorage.setItem(TOKEN, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(TOKEN);
  location.assign("/console");
}

function headers(extra) {
  const found = token();
  return found ? { Authorization: `Bearer ${found}`, ...extra } : { ...extra };
}

async function failure(response) {
  let code = "http_" + response.status;
  let message = response.statusText || "the request failed";
  try {
    const body = await response.json();
    code = body.error || code;
    message = body.message || message;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiFailure(response.status, code, message);
}

// GET (or another method with a JSON body) against this gateway's API; the parsed JSON, or an
// ApiFailure carrying the API's own error code and message.
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN);
    location.assign("/console?expired=1");
    throw await failure(response);
  }
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// The bytes behind an owned URL (an asset), read with the caller's credential.
export async function blob(path) {
  const response = await fetch(path, { headers: headers({}) });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? "?" + text : "";
}

// Build an element: el("td", {class: "num"}, "3") — children are nodes or text (never HTML).
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function rows(table, items, cells) {
  const body = table.tBodies[0];
  body.replaceChildren(...items.map((item) => el("tr", {}, ...cells(item).map((c) => c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c)))));
  if (!items.length) {
    const width = table.tHead ? table.tHead.rows[0].cells.length : 1;
    body.append(el("tr", { class: "empty" }, el("td", { colspan: width }, "nothing here yet")));
  }
}

export function facts(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value ?? "—")]));
}

export function problem(error) {
  const box = document.getElementById("problem");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.dataset.code = error.code || "error";
  box.textContent = error instanceof ApiFailure ? `${error.message} (${error.code})` : String(error.message || error);
}

export const fmt = {
  number(value, digits = 2) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    return Number(value).toLocaleString("en", { maximumFractionDigits: digits });
  },
  seconds(value) {
    if (value === null || value === undefined) return "—";
    if (!Number.isFinite(value)) return "∞";
    if (value < 1) return `${(value * 1000).toFixed(1)} ms`;
    if (value < 120) return `${value.toFixed(2)} s`;
    return `${(value / 60).toFixed(1)} min`;
  },
  ms(value) {
    return value === null || value === undefined ? "—" : `${Number(value).toFixed(1)} ms`;
  },
  time(iso) {
    if (!iso) return "—";
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? iso : moment.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  },
  money(value, currency) {
    if (value === null || value === undefined) return "—";
    return `${Number(value).toLocaleString("en", { maximumFractionDigits: 6 })}${currency ? " " + currency : ""}`;
  },
};

// Re-run `refresh` every `ms` while the tab is visible (the console's live updating).
export function live(refresh, ms = 5000) {
  const stamp = document.getElementById("updated");
  const tick = async () => {
    if (document.hidden) return;
    try {
      await refresh();
      problem(null);
      if (stamp) stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      problem(error);
    }
  };
  tick();
  return setInterval(tick, ms);
}

// Who is signed in (GET /me), with the navigation set for them; sends anyone signed out to
// the sign-in page. Admin-only pages say so to a customer rather than failing.
export async function start({ adminOnly = false } = {}) {
  if (!token()) {
    location.assign("/console");
    throw new Error("not signed in");
  }
  const me = await api("/me");
  document.getElementById("who").textContent = `${me.customer_id} · ${me.plan}${me.admin ? " · admin" : ""}`;
  const out = document.getElementById("sign-out");
  out.hidden = false;
  out.addEventListener("click", signOut);
  for (const node of document.querySelectorAll("[data-admin-only]")) node.hidden = !me.admin;
  const page = document.body.dataset.page;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
  }
  if (adminOnly && !me.admin) {
    problem(new ApiFailure(403, "forbidden", "this page is for admins"));
    throw new ApiFailure(403, "forbidden", "this page is for admins");
  }
  return me;
}

// Run a page's main function, showing any failure in the page (never an uncaught error).
export function page(main) {
  main().catch((error) => {
    if (error instanceof ApiFailure || error.message === "not signed in") {
      if (error instanceof ApiFailure) problem(error);
      return;
    }
    problem(error);
    console.warn(error);
  });
}

export function isoLocal(input) {
  // <input type="datetime-local"> gives local time without a zone: make it an instant.
  return input ? new Date(input).toISOString() : undefined;
}
