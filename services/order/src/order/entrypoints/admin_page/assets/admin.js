// The admin page: plain DOM and fetch against the order service's own HTTP API (same origin).
// Everything shown comes from the API and is written with textContent, never as HTML.

const TOKEN_KEY = "order-backbone-admin-token";
const PAGE_SIZE = 50;
// Communications and audit entries follow a change asynchronously (over Kafka), so they are
// read again every so often while an order is open.
const CONSEQUENCES_POLL_MS = 2000;

const state = {
  token: null,
  role: null,
  nextCursor: null,
  order: null,
  pollTimer: null,
  changing: false,
  signedIn: false,
  // Counts the orders opened: an answer for an order opened before the latest one is dropped.
  opened: 0,
};

const $ = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

function when(iso) {
  if (!iso) return "";
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function fields(value) {
  if (value === null || value === undefined) return "";
  return Object.entries(value)
    .map(([key, v]) => `${key}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
}

// An Idempotency-Key for one click: a retried request with it has no second effect.
// (crypto.randomUUID needs a secure context; getRandomValues does not.)
function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(path, { method = "GET", json, headers = {} } = {}) {
  const request = { method, headers: { Authorization: `Bearer ${state.token}`, ...headers } };
  if (json !== undefined) {
    request.headers["Content-Type"] = "application/json";
    request.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, request);
  } catch (error) {
    return { ok: false, status: 0, body: null, network: String(error) };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { ok: response.ok, status: response.status, body };
}

// The API's one error shape, {"error": {"code", "message", "details"}}, in a line.
function describeError(answer) {
  if (answer.status === 0) return `The order service cannot be reached (${answer.network}).`;
  const error = answer.body && answer.body.error;
  if (!error) return `HTTP ${answer.status}`;
  const details = fields(error.details);
  return `${answer.status} ${error.code}: ${error.message}${details ? ` (${details})` : ""}`;
}

function notify(message) {
  $("notice").textContent = message || "";
  show($("notice"), Boolean(message));
}

// ----- signing in -----

async function signIn(token) {
  state.token = token;
  const answer = await api("/auth/whoami");
  if (!answer.ok) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    return describeError(answer);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.role = answer.body.role;
  for (const node of document.querySelectorAll(".admin-only")) show(node, state.role === "admin");
  show($("sign-in"), false);
  show($("workspace"), true);
  await Promise.all([loadStatuses(), loadOrders(true)]);
  // Routes from here on follow the address; this one reads it as it is now.
  state.signedIn = true;
  await route();
  $("whoami").textContent = `${answer.body.id} (${answer.body.role})`;
  show($("session"), true);
  return null;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  stopPolling();
  Object.assign(state, { token: null, role: null, order: null, nextCursor: null, signedIn: false });
  location.hash = "";
  location.reload();
}

// ----- the order list -----

// The statuses come from the API's own OpenAPI document: the page knows none itself.
async function loadStatuses() {
  const select = $("status-filter");
  if (select.options.length > 1) return;
  const response = await fetch("/openapi.json");
  if (!response.ok) return;
  const document_ = await response.json();
  for (const status of document_.components.schemas.OrderStatus.enum) {
    const option = element("option", status);
    option.value = status;
    select.append(option);
  }
}

async function loadOrders(reset) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const status = $("status-filter").value;
  if (status) params.set("status", status);
  if (!reset && state.nextCursor) params.set("cursor", state.nextCursor);
  const answer = await api(`/orders?${params}`);
  if (!answer.ok) {
    notify(describeError(answer));
    return;
  }
  const body = $("order-list").tBodies[0];
  if (reset) body.replaceChildren();
  for (const order of answer.body.items) {
    const row = element("tr");
    row.dataset.orderId = order.id;
    const open = element("a", order.id);
    open.href = `#/orders/${order.id}`;
    const idCell = element("td");
    idCell.append(open);
    row.append(
      idCell,
      element("td", `${order.customer.name} <${order.customer.email}>`),
      element("td", order.status, `status status-${order.status}`),
      element("td", order.version),
      element("td", when(order.updated_at)),
    );
    body.append(row);
  }
  state.nextCursor = answer.body.next_cursor;
  show($("more-orders"), Boolean(state.nextCursor));
}

async function createOrder(form) {
  const data = new FormData(form);
  const customer = { name: data.get("name"), email: data.get("email") };
  if (data.get("phone")) customer.phone = data.get("phone");
  const answer = await api("/orders", {
    method: "POST",
    json: { customer },
    headers: { "Idempotency-Key": idempotencyKey() },
  });
  if (!answer.ok) {
    notify(describeError(answer));
    return;
  }
  notify(null);
  form.reset();
  await loadOrders(true);
  location.hash = `#/orders/${answer.body.id}`;
}

// ----- one order -----

function orderIdFromHash() {
  const match = /^#\/orders\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  return match ? match[1] : null;
}

async function route() {
  const id = orderIdFromHash();
  if (id) await openOrder(id);
}

async function openOrder(id) {
  stopPolling();
  const ticket = ++state.opened;
  $("change-error").hidden = true;
  const answer = await api(`/orders/${id}`);
  if (ticket !== state.opened) return;
  if (!answer.ok) {
    show($("order"), false);
    notify(describeError(answer));
    return;
  }
  notify(null);
  renderOrder(answer.body);
  show($("order"), true);
  for (const name of ["history", "communications", "audit"]) $(name).tBodies[0].replaceChildren();
  await Promise.all([loadHistory(), loadConsequences()]);
  if (ticket === state.opened) state.pollTimer = setInterval(loadConsequences, CONSEQUENCES_POLL_MS);
}

function stopPolling() {
  if (state.pollTimer !== null) clearInterval(state.pollTimer);
  state.pollTimer = null;
}

function renderOrder(order) {
  state.order = order;
  $("order-id").textContent = order.id;
  $("order-status").textContent = order.status;
  $("order-version").textContent = order.version;
  const contact = [order.customer.name, order.customer.email, order.customer.phone];
  $("order-customer").textContent = contact.filter(Boolean).join(" · ");
  $("order-created").textContent = when(order.created_at);
  $("order-updated").textContent = when(order.updated_at);

  const buttons = $("next-statuses");
  buttons.replaceChildren();
  const mayChange = state.role === "admin";
  if (mayChange) {
    for (const status of order.allowed_next) {
      const button = element("button", status, `next status-${status}`);
      button.type = "button";
      button.dataset.status = status;
      button.addEventListener("click", () => changeStatus(status));
      buttons.append(button);
    }
    if (order.allowed_next.length === 0) buttons.append(element("span", "final status", "hint"));
  }
  show($("read-only"), !mayChange);
}

async function changeStatus(status) {
  if (state.changing) return;
  state.changing = true;
  for (const button of $("next-statuses").querySelectorAll("button")) button.disabled = true;
  const reason = $("change-reason").value.trim();
  const order = state.order;
  // If-Match: the change applies only to the version on screen, so nobody else's change is
  // overwritten unseen (412 otherwise).
  const answer = await api(`/orders/${order.id}/status`, {
    method: "POST",
    json: { status, reason: reason || null },
    headers: { "If-Match": String(order.version), "Idempotency-Key": idempotencyKey() },
  });
  state.changing = false;
  if (answer.ok) {
    $("change-error").hidden = true;
    $("change-reason").value = "";
    renderOrder(answer.body);
  } else {
    $("change-error").textContent = describeError(answer);
    show($("change-error"), true);
    const current = await api(`/orders/${order.id}`);
    renderOrder(current.ok ? current.body : order);
  }
  await Promise.all([loadHistory(), loadConsequences(), loadOrders(true)]);
}

async function loadHistory() {
  const id = state.order.id;
  const answer = await api(`/orders/${id}/history`);
  if (state.order.id !== id) return;
  const body = $("history").tBodies[0];
  if (!answer.ok) {
    body.replaceChildren(errorRow(describeError(answer), 6));
    return;
  }
  body.replaceChildren(
    ...answer.body.items.map((entry) => {
      const row = element("tr");
      row.dataset.version = entry.version;
      row.append(
        element("td", when(entry.occurred_at)),
        element("td", entry.from ?? "—"),
        element("td", entry.to),
        element("td", entry.version),
        element("td", entry.actor),
        element("td", entry.reason ?? ""),
      );
      return row;
    }),
  );
}

function errorRow(message, columns) {
  const row = element("tr");
  const cell = element("td", message, "error");
  cell.colSpan = columns;
  row.append(cell);
  return row;
}

// Communications and the audit timeline: read from the notifier and the audit service
// through the order service; either may be down, which the page says instead of failing.
async function loadConsequences() {
  if (!state.order) return;
  const id = state.order.id;
  await Promise.all([
    loadRelayed(id, "communications", "communications", communicationRow),
    loadRelayed(id, "audit", "audit", auditRow),
  ]);
}

async function loadRelayed(id, path, name, toRow) {
  const answer = await api(`/orders/${id}/${path}`);
  if (!state.order || state.order.id !== id) return;
  const stateLine = $(`${name}-state`);
  const body = $(name).tBodies[0];
  stateLine.classList.toggle("error", !answer.ok);
  if (!answer.ok) {
    const error = answer.body && answer.body.error;
    stateLine.textContent =
      answer.status === 503 && error
        ? `Unavailable: ${error.message}`
        : describeError(answer);
    stateLine.dataset.state = answer.status === 503 ? "unavailable" : "error";
    // Rows read earlier would pass for the current state; none is better than stale ones.
    body.replaceChildren();
    return;
  }
  stateLine.dataset.state = "ok";
  const items = answer.body.items;
  stateLine.textContent = items.length === 0 ? "None yet." : `${items.length} shown.`;
  body.replaceChildren(...items.map(toRow));
}

function communicationRow(item) {
  const row = element("tr");
  row.dataset.status = item.status;
  row.append(
    element("td", when(item.created_at)),
    element("td", item.channel),
    element("td", item.template),
    element("td", item.recipient),
    element("td", item.status, `status comm-${item.status}`),
    element("td", item.attempts),
    element("td", when(item.sent_at)),
    element("td", item.last_error ?? ""),
  );
  return row;
}

function auditRow(entry) {
  const row = element("tr");
  row.dataset.action = entry.action;
  row.append(
    element("td", when(entry.occurred_at)),
    element("td", entry.action),
    element("td", entry.actor),
    element("td", fields(entry.before)),
    element("td", fields(entry.after)),
    element("td", entry.reason ?? ""),
  );
  return row;
}

// ----- wiring -----

document.addEventListener("DOMContentLoaded", async () => {
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const refused = await signIn($("token").value.trim());
    $("token").value = "";
    if (refused) notifySignIn(refused);
  });
  $("sign-out").addEventListener("click", signOut);
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadOrders(true);
  });
  $("open-form").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/orders/${$("open-id").value.trim()}`;
  });
  $("more-orders").addEventListener("click", () => loadOrders(false));
  $("create-form").addEventListener("submit", (event) => {
    event.preventDefault();
    createOrder(event.target);
  });
  window.addEventListener("hashchange", () => {
    if (state.signedIn) route();
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    const refused = await signIn(saved);
    if (refused) notifySignIn(refused);
  }
});

function notifySignIn(message) {
  let line = document.getElementById("sign-in-error");
  if (!line) {
    line = element("p", "", "error");
    line.id = "sign-in-error";
    line.setAttribute("role", "alert");
    $("sign-in").append(line);
  }
  line.textContent = `Token refused: ${message}`;
}
