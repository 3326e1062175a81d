// The swiftray dashboard: polls the head's state API (/api/v0/...) once a second and
// renders tables and the task stream. No framework, nothing loaded from elsewhere.
"use strict";

const REFRESH_MS = 1000;
const STREAM_WINDOW_MS = 60000;
let activeTab = "overview";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    // Styles through the CSSOM: the page's policy forbids inline style attributes.
    if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  const body = await r.json();
  if (!body.result) throw new Error(body.msg);
  return body.data.result;
}

function short(id) { return id ? String(id).slice(0, 12) : ""; }
function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function state(s) { return el("span", { class: `state state-${s}` }, s); }
function usage(used, total, fmt) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const bar = el("span", { class: "bar" }, el("span", { style: `width:${pct.toFixed(0)}%` }));
  return el("span", {}, bar, `${fmt(used)} / ${fmt(total)}`);
}
function num(n) { return n == null ? "" : (Math.round(n * 100) / 100).toString(); }

function fill(tableId, rows, cells) {
  const body = document.querySelector(`#${tableId} tbody`);
  const fresh = document.createElement("tbody");
  for (const r of rows) {
    const tr = el("tr", {});
    for (const c of cells(r)) tr.append(c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c));
    fresh.append(tr);
  }
  body.replaceWith(fresh);
}

function card(value, label) {
  return el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

async function overview() {
  const nodes = (await api("/api/v0/nodes?limit=10000")).result;
  const alive = nodes.filter((n) => n.state === "ALIVE");
  const sum = (key, side) => alive.reduce((a, n) => a + ((n[side] || {})[key] || 0), 0);
  const storeUsed = alive.reduce((a, n) => a + (n.object_store_used_memory || 0), 0);
  const storeTotal = alive.reduce((a, n) => a + (n.object_store_total_memory || 0), 0);
  const cards = document.getElementById("cluster-cards");
  cards.replaceChildren(
    card(`${alive.length} / ${nodes.length}`, "nodes alive"),
    card(`${num(sum("CPU", "resources_total") - sum("CPU", "resources_available"))} / ${num(sum("CPU", "resources_total"))}`, "CPUs in use"),
    card(`${num(sum("GPU", "resources_total") - sum("GPU", "resources_available"))} / ${num(sum("GPU", "resources_total"))}`, "GPUs in use"),
    card(`${bytes(storeUsed)} / ${bytes(storeTotal)}`, "object store"),
  );
  fill("nodes-table", nodes, (n) => {
    const t = n.resources_total || {}, a = n.resources_available || {};
    const other = Object.keys(t).filter((k) => !["CPU", "GPU", "memory"].includes(k))
      .map((k) => `${k}: ${num(t[k] - (a[k] || 0))}/${num(t[k])}`).join(", ");
    return [el("td", { class: "node-id", title: n.node_id }, short(n.node_id)), n.node_ip || "(local)", state(n.state),
      n.is_head_node ? "yes" : "", usage((t.CPU || 0) - (a.CPU || 0), t.CPU || 0, num),
      usage((t.GPU || 0) - (a.GPU || 0), t.GPU || 0, num), usage((t.memory || 0) - (a.memory || 0), t.memory || 0, bytes),
      usage(n.object_store_used_memory || 0, n.object_store_total_memory || 0, bytes), other];
  });
  const summary = (await api("/api/v0/tasks/summarize")).result;
  const groups = Object.values((summary.cluster || {}).summary || {});
  fill("summary-table", groups, (g) => [g.func_or_class_name, g.type,
    Object.entries(g.state_counts || {}).map(([s, n]) => `${s}: ${n}`).join("  ")]);
}

function taskQuery(limit, detail) {
  const s = document.getElementById("task-state").value;
  const name = document.getElementById("task-name").value.trim();
  let q = `/api/v0/tasks?limit=${limit}&detail=${detail ? 1 : 0}`;
  if (s) q += `&filter_keys=state&filter_predicates=%3D&filter_values=${encodeURIComponent(s)}`;
  else if (name) q += `&filter_keys=name&filter_predicates=%3D&filter_values=${encodeURIComponent(name)}`;
  return q;
}

async function tasks() {
  const limit = Math.max(1, Math.min(10000, parseInt(document.getElementById("task-limit").value, 10) || 200));
  const answer = await api(taskQuery(limit, true));
  const name = document.getElementById("task-name").value.trim();
  const rows = answer.result.filter((t) => !name || (t.name || "").includes(name));
  document.getElementById("tasks-count").textContent = `(${rows.length} shown of ${answer.total})`;
  const now = Date.now();
  fill("tasks-table", rows, (t) => [
    el("td", { class: "task-id mono", title: t.task_id }, t.task_id), t.attempt_number, t.name, state(t.state), t.type,
    el("td", { title: t.node_id || "" }, short(t.node_id)), t.worker_pid == null ? "" : t.worker_pid,
    t.start_time_ms ? `${(((t.end_time_ms || now) - t.start_time_ms) / 1000).toFixed(3)} s` : "",
    el("td", { class: "error" }, t.error_type ? `${t.error_type}: ${(t.error_message || "").slice(0, 300)}` : ""),
  ]);
}

function color(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 60%, 55%)`;
}

async function stream() {
  const rows = (await api("/api/v0/tasks?limit=5000&detail=1")).result.filter((t) => t.start_time_ms && t.worker_pid != null);
  // The last minute, or less when the tasks in view started more recently.
  const now = Date.now();
  const earliest = Math.min(now, ...rows.map((t) => t.start_time_ms));
  const from = Math.max(now - STREAM_WINDOW_MS, earliest - 1000);
  const span = Math.max(now - from, 1);
  const lanes = new Map();
  for (const t of rows) {
    if ((t.end_time_ms || now) < from) continue;
    const lane = `${short(t.node_id)} pid ${t.worker_pid}`;
    if (!lanes.has(lane)) lanes.set(lane, []);
    lanes.get(lane).push(t);
  }
  const canvas = document.getElementById("stream-canvas");
  const laneH = 18, left = 170, names = Array.from(lanes.keys()).sort();
  canvas.height = Math.max(60, names.length * laneH + 24);
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.font = "11px sans-serif";
  const x = (ms) => left + ((ms - from) / span) * (canvas.width - left - 10);
  const seen = new Set();
  names.forEach((lane, i) => {
    const y = i * laneH + 4;
    g.fillStyle = "#5d6675";
    g.fillText(lane, 4, y + 12);
    for (const t of lanes.get(lane)) {
      const a = Math.max(x(t.start_time_ms), left), b = Math.max(x(t.end_time_ms || now), a + 2);
      g.fillStyle = t.state === "FAILED" ? "#d93025" : color(t.name || "?");
      g.fillRect(a, y, b - a, laneH - 4);
      seen.add(t.name || "?");
    }
  });
  g.fillStyle = "#5d6675";
  g.fillText(`-${(span / 1000).toFixed(1)} s`, left, canvas.height - 4);
  g.fillText("now", canvas.width - 30, canvas.height - 4);
  const legend = document.getElementById("stream-legend");
  legend.replaceChildren(...Array.from(seen).sort().map((n) => el("span", {}, el("i", { style: `background:${color(n)}` }), n)));
}

async function actors() {
  const rows = (await api("/api/v0/actors?limit=10000")).result;
  fill("actors-table", rows, (a) => [el("td", { title: a.actor_id }, short(a.actor_id)), a.class_name, state(a.state), a.name,
    short(a.node_id), a.pid == null ? "" : a.pid, a.num_restarts, a.death_cause ? JSON.stringify(a.death_cause) : ""]);
}

// Asking every process for its references costs them a copy of their tables: every 5 s.
const OBJECTS_EVERY_MS = 5000;
let objectsAt = 0;
async function objects() {
  if (Date.now() - objectsAt < OBJECTS_EVERY_MS) return;
  objectsAt = Date.now();
  const summary = (await api("/api/v0/objects/summarize")).result.cluster;
  const group = (summary.summary || {}).disabled || { ref_type_counts: {} };
  document.getElementById("objects-cards").replaceChildren(card(summary.total_objects, "references"),
    card(`${summary.total_size_mb.toFixed(1)} MiB`, "known size"),
    ...Object.entries(group.ref_type_counts).map(([k, v]) => card(v, k)));
  const nodes = (await api("/api/v0/nodes?limit=10000")).result.filter((n) => n.state === "ALIVE");
  fill("stores-table", nodes, (n) => [el("td", { title: n.node_id }, short(n.node_id)), n.node_ip,
    usage(n.object_store_used_memory || 0, n.object_store_total_memory || 0, bytes)]);
  const rows = (await api("/api/v0/objects?limit=2000")).result;
  fill("objects-table", rows, (o) => [el("td", { title: o.object_id, class: "mono" }, o.object_id),
    o.object_size == null ? "?" : bytes(o.object_size), state(o.task_status), o.reference_type, o.is_owner ? "owner" : "borrower",
    o.num_borrowers, o.type, o.pid, short(o.node_id), o.in_object_store ? "yes" : "no"]);
  const events = (await api("/api/v0/object_events?limit=200")).result;
  fill("object-events-table", events, (e) => [new Date(e.end_time_ms).toLocaleTimeString(), e.event,
    el("td", { title: e.object_id, class: "mono" }, e.object_id), bytes(e.object_size), short(e.node_id),
    `${e.end_time_ms - e.start_time_ms} ms`, e.peer || ""]);
}

async function groups() {
  const rows = (await api("/api/v0/placement_groups?limit=10000")).result;
  fill("groups-table", rows, (p) => [short(p.placement_group_id), p.name, state(p.state), p.strategy, JSON.stringify(p.bundles)]);
}

async function jobs() {
  const rows = (await api("/api/v0/jobs?limit=10000")).result;
  const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
  fill("jobs-table", rows, (j) => [j.job_id, state(j.status), j.entrypoint, (j.driver_info || {}).pid,
    (j.driver_info || {}).node_ip_address, time(j.start_time), time(j.end_time)]);
}

// Workers (asked of every node) and a node's log files; the chosen file's last lines
// follow along while the tab is open.
let logChoice = null;  // { node, name }
function openLog(node, name) {
  logChoice = { node, name };
  document.getElementById("log-title").textContent = `${name} (node ${short(node)})`;
  refresh();
}
async function logs() {
  const workers = (await api("/api/v0/workers?limit=10000")).result;
  fill("workers-table", workers, (w) => {
    const out = el("a", { href: "#logs", class: "log-link" }, "stdout");
    const err = el("a", { href: "#logs", class: "log-link" }, "stderr");
    const file = (ext) => `worker-${w.worker_id}-${w.pid}.${ext}`;
    out.addEventListener("click", () => openLog(w.node_id, file("out")));
    err.addEventListener("click", () => openLog(w.node_id, file("err")));
    return [el("td", { title: w.worker_id }, short(w.worker_id)), w.worker_type, w.is_alive ? "yes" : "no", w.pid,
      short(w.node_id), w.ip, el("td", { class: "error" }, w.exit_detail || ""),
      w.worker_type === "WORKER" ? el("td", {}, out, " ", err) : ""];
  });
  const nodes = (await api("/api/v0/nodes?limit=10000")).result.filter((n) => n.state === "ALIVE");
  const select = document.getElementById("log-node");
  const ids = nodes.map((n) => n.node_id);
  if (Array.from(select.options).map((o) => o.value).join() !== ids.join()) {
    const keep = select.value;
    select.replaceChildren(...nodes.map((n) => el("option", { value: n.node_id }, `${short(n.node_id)} (${n.node_ip})`)));
    if (ids.includes(keep)) select.value = keep;
  }
  if (select.value) {
    const listing = await api(`/api/v0/logs?node_id=${encodeURIComponent(select.value)}`);
    const node = select.value;
    fill("logfiles-table", listing[node] || [], (f) => {
      const a = el("a", { href: "#logs", class: "log-link" }, f.name);
      a.addEventListener("click", () => openLog(node, f.name));
      return [el("td", {}, a), bytes(f.size), new Date(f.modified_ms).toLocaleTimeString()];
    });
  }
  if (logChoice) {
    const lines = Number(document.getElementById("log-lines").value) || 1000;
    const q = `node_id=${encodeURIComponent(logChoice.node)}&filename=${encodeURIComponent(logChoice.name)}&lines=${lines}`;
    const r = await fetch(`/api/v0/logs/file?${q}`, { credentials: "same-origin", cache: "no-store" });
    const pre = document.getElementById("log-text");
    const text = r.ok ? await r.text() : `(cannot read it: HTTP ${r.status})`;
    if (pre.textContent !== text) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  }
}

const views = { overview, tasks, stream, actors, objects, groups, jobs, logs };

async function refresh() {
  const status = document.getElementById("status");
  try {
    await views[activeTab]();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "status";
  } catch (e) {
    status.textContent = `cannot reach the head: ${e.message}`;
    status.className = "status error";
  }
}

function show(tab) {
  activeTab = views[tab] ? tab : "overview";
  objectsAt = 0;  // a tab just opened shows what is there now
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === activeTab);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === activeTab);
  refresh();
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));
window.addEventListener("DOMContentLoaded", () => {
  for (const id of ["task-state", "task-name", "task-limit", "log-node", "log-lines"]) {
    document.getElementById(id).addEventListener("change", refresh);
  }
  show(location.hash.slice(1) || "overview");
  setInterval(refresh, REFRESH_MS);
});
