// Vantage dashboard: polls the scheduler every 2 s and renders the map, the
// node table, the selected node's route table and the weights editor.
// Plain DOM, no dependencies, no request outside this scheduler.
"use strict";

const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const WEIGHTS = ["latency", "loss", "buffer", "load", "distance"];
const $ = (sel) => document.querySelector(sel);

const ui = { state: null, selected: null, routes: null, refreshes: 0, dirty: new Set(), dev: true };
window.vantage = ui; // for tests and curious operators

// ---------------------------------------------------------------- formatting

function fmt(v, digits = 0, unit = "") {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits) + unit;
}
function pct(v, digits = 1) {
  return v === null || v === undefined ? "–" : (v * 100).toFixed(digits) + " %";
}
function age(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// Score in [0, 1] (lower is better) → green … yellow … red.
function scoreColour(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "#9aa5b1";
  const stops = [[0, [26, 152, 80]], [0.5, [254, 224, 139]], [1, [215, 48, 39]]];
  const x = Math.min(1, Math.max(0, s));
  const i = x <= 0.5 ? 0 : 1;
  const [x0, c0] = stops[i];
  const [x1, c1] = stops[i + 1];
  const t = (x - x0) / (x1 - x0);
  const c = c0.map((a, k) => Math.round(a + (c1[k] - a) * t));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
function nodeScore(n) {
  return n.score && typeof n.score.score === "number" ? n.score.score : null;
}
// Equirectangular, as scripts/make-basemap.mjs projects the basemap.
function project(lat, lon) {
  return [lon + 180, 90 - lat];
}

// ---------------------------------------------------------------- map

function drawGraticule() {
  const g = $("#graticule");
  for (let lon = -150; lon <= 150; lon += 30) {
    const [x] = project(0, lon);
    g.append(svg("line", { x1: x, y1: 0, x2: x, y2: 180 }));
  }
  for (let lat = -60; lat <= 60; lat += 30) {
    const [, y] = project(lat, 0);
    g.append(svg("line", { x1: 0, y1: y, x2: 360, y2: y }));
  }
}

function renderMap(nodes) {
  const g = $("#markers");
  g.replaceChildren();
  const placed = nodes.filter((n) => typeof n.lat === "number" && typeof n.lon === "number");
  // Draw the selected node last so it stays on top.
  placed.sort((a, b) => (a.id === ui.selected) - (b.id === ui.selected));
  // Labels avoid each other and the markers (greedy, in drawing order).
  const taken = placed.map((n) => {
    const [x, y] = project(n.lat, n.lon);
    return [x - 2, y - 2, x + 2, y + 2];
  });
  for (const n of placed) {
    const [x, y] = project(n.lat, n.lon);
    const s = nodeScore(n);
    const down = n.state === "down";
    const m = svg("g", {
      class: `node-marker st-${n.state}` + (n.id === ui.selected ? " selected" : ""),
      "data-id": n.id,
      "data-state": n.state,
    });
    const title = svg("title");
    title.textContent = `${n.id} (${n.state}) score ${fmt(s, 3)}`;
    const r = 1.4 + Math.min(2.2, Math.sqrt((n.qoe && n.qoe.viewers) || 0) * 0.5);
    m.append(
      title,
      svg("circle", { cx: x, cy: y, r, fill: down ? "#9aa5b1" : scoreColour(s) }),
    );
    const [lx, ly, anchor] = placeLabel(x, y, r, n.id, taken);
    if (Math.hypot(lx - x, ly - y) > r + 3) m.append(svg("line", { x1: x, y1: y, x2: lx, y2: ly - 1 }));
    const label = svg("text", { x: lx, y: ly, "text-anchor": anchor });
    label.textContent = n.id;
    m.append(label);
    m.addEventListener("click", () => select(n.id));
    g.append(m);
  }
  renderLinks();
}

// A label position near (x, y) whose box overlaps no box in `taken`
// (which it then joins): right, left, above, below, then further out.
function placeLabel(x, y, r, text, taken) {
  const w = text.length * 1.75 + 0.5;
  const h = 3.4;
  const overlaps = (b) => taken.some((t) => b[0] < t[2] && b[2] > t[0] && b[1] < t[3] && b[3] > t[1]);
  for (const d of [0, 4, 8, 12]) {
    const options = [
      [x + r + 0.8 + d * 0.5, y + 1.1 + d, "start"],
      [x - r - 0.8 - d * 0.5, y + 1.1 + d, "end"],
      [x + r + 0.8 + d * 0.5, y + 1.1 - d, "start"],
      [x - r - 0.8 - d * 0.5, y + 1.1 - d, "end"],
    ];
    for (const [lx, ly, anchor] of options) {
      const x0 = anchor === "start" ? lx : lx - w;
      const box = [x0, ly - h + 0.6, x0 + w, ly + 0.6];
      if (!overlaps(box)) {
        taken.push(box);
        return [lx, ly, anchor];
      }
    }
  }
  return [x + r + 0.8, y + 1.1, "start"];
}

// Lines from the selected node to the upstreams its route table names.
function renderLinks() {
  const g = $("#links");
  g.replaceChildren();
  if (!ui.state || !ui.routes || !ui.routes.table || ui.routes.node_id !== ui.selected) return;
  const byId = new Map(ui.state.nodes.map((n) => [n.id, n]));
  const me = byId.get(ui.selected);
  if (!me || typeof me.lat !== "number") return;
  const seen = new Set();
  for (const s of ui.routes.table.streams || []) {
    const u = (s.upstreams || [])[0];
    const peer = u && byId.get(u.node_id);
    if (!peer || seen.has(peer.id) || typeof peer.lat !== "number") continue;
    seen.add(peer.id);
    const [x1, y1] = project(me.lat, me.lon);
    const [x2, y2] = project(peer.lat, peer.lon);
    g.append(svg("line", { x1, y1, x2, y2 }));
  }
}

// ---------------------------------------------------------------- table

function renderTable(nodes) {
  const body = $("#nodes tbody");
  body.replaceChildren();
  for (const n of nodes) {
    const q = n.qoe || {};
    const l = n.load;
    const s = nodeScore(n);
    const util = l ? l.utilisation : null;
    const rtt = q.viewer_rtt_ms !== null && q.viewer_rtt_ms !== undefined
      ? fmt(q.viewer_rtt_ms, 1)
      : q.path_rtt_ms !== null && q.path_rtt_ms !== undefined ? `(${fmt(q.path_rtt_ms, 1)})` : "–";
    const loss = q.retransmit_rate !== null && q.retransmit_rate !== undefined
      ? pct(q.retransmit_rate, 2)
      : q.path_loss !== null && q.path_loss !== undefined ? `(${pct(q.path_loss, 2)})` : "–";
    const buffer = q.buffer_ms === null || q.buffer_ms === undefined
      ? "–"
      : fmt(q.buffer_ms, 0, " ms") + (q.buffer_source === "gop_cache" ? " (GOP)" : "");
    const route = n.route || {};
    const tr = el(
      "tr",
      { class: "node-row" + (n.id === ui.selected ? " selected" : ""), "data-id": n.id },
      el("td", {}, el("strong", {}, n.id)),
      el("td", {}, el("span", { class: `badge ${n.state}` }, n.state)),
      el("td", {}, n.region || "–"),
      el("td", {}, el("span", { class: "score", style: `background:${scoreColour(s)}` }, fmt(s, 3))),
      el("td", {}, l ? l.viewers : "–"),
      el(
        "td",
        { title: l ? `${fmt(l.egress_mbps, 1)} / ${fmt(n.capacity_mbps, 0)} Mbps` : "" },
        el("span", { class: "bar" }, el("i", { style: `width:${Math.min(100, (util || 0) * 100)}%` })),
        pct(util),
      ),
      el("td", {}, l ? pct(l.cpu, 0) : "–"),
      el("td", {}, rtt),
      el("td", {}, loss),
      el("td", {}, buffer),
      el("td", {}, l ? l.streams : "–"),
      el("td", {}, age(n.last_report_age_ms)),
      el(
        "td",
        {},
        `v${route.version || 0}`,
        route.acked_version === route.version ? " ✓" : ` (acked v${route.acked_version || 0})`,
        route.nacked ? " NACK" : "",
      ),
    );
    tr.addEventListener("click", () => select(n.id));
    body.append(tr);
  }
}

// ---------------------------------------------------------------- routes

async function select(id) {
  ui.selected = id;
  ui.routes = null;
  render();
  await loadRoutes();
}

async function loadRoutes() {
  const id = ui.selected;
  if (!id) return;
  try {
    const r = await fetch(`/v1/routes/${encodeURIComponent(id)}`);
    const body = await r.json();
    if (ui.selected !== id) return;
    ui.routes = r.ok ? body : { node_id: id, error: body.error || r.statusText };
  } catch (e) {
    ui.routes = { node_id: id, error: String(e) };
  }
  renderRoutes();
  renderLinks();
}

function renderRoutes() {
  const box = $("#routes");
  const r = ui.routes;
  $("#routes-node").textContent = ui.selected ? `— ${ui.selected}` : "— no node selected";
  if (!r) {
    box.replaceChildren(el("p", { class: "muted" }, ui.selected ? "loading…" : "Select a node."));
    return;
  }
  if (r.error) {
    box.replaceChildren(el("p", { class: "err" }, r.error));
    return;
  }
  const t = r.table;
  const head = el(
    "p",
    {},
    `version ${r.version}, acked ${r.acked_version}`,
    r.nacked ? el("span", { class: "err" }, ` — NACKed v${r.nacked.version}: ${r.nacked.detail}`) : "",
    t ? el("span", { class: "muted" }, ` · weights v${t.weights_version} · ttl ${t.ttl_s} s`) : "",
  );
  if (!t) {
    box.replaceChildren(head, el("p", { class: "muted" }, "No table planned yet."));
    return;
  }
  const streams = el("table", { id: "route-streams" },
    el("thead", {}, el("tr", {}, el("th", {}, "stream"), el("th", {}, "upstreams (best first)"))));
  const sb = el("tbody");
  // Every live stream as this node pulls it (its origin's route in the
  // table), marked when the node subscribed to it (its table lists it),
  // then the static-origin patterns.
  const listed = new Set((t.directory || []).map((d) => d.stream));
  const rows = (r.stream_routes || []).map((s) => {
    const route = (t.origins || []).find((o) => o.origin === s.origin);
    const note = s.origin === r.node_id ? " (published here)" : listed.has(s.stream) ? " (subscribed)" : "";
    return { stream: s.stream + note, upstreams: route ? route.upstreams : s.upstreams };
  });
  rows.push(...(t.patterns || []));
  for (const s of rows) {
    const ups = el("td");
    (s.upstreams || []).forEach((u, i) => {
      if (i) ups.append(" → ");
      ups.append(
        el("strong", {}, u.node_id || u.url),
        el("span", { class: "kind" }, ` ${u.kind || "node"}${u.hops ? `, ${u.hops} hop` : ""}${u.score !== undefined ? `, ${fmt(u.score, 3)}` : ""}`),
      );
    });
    sb.append(el("tr", {}, el("td", {}, s.stream), ups));
  }
  if (!rows.length) sb.append(el("tr", {}, el("td", { colspan: 2, class: "muted" }, "no streams")));
  streams.append(sb);
  const probes = el("p", { class: "muted" },
    "probe targets: " + ((t.probe_targets || []).map((p) => `${p.node_id} (${p.reason})`).join(", ") || "none"));
  box.replaceChildren(head, streams, probes);
}

// ---------------------------------------------------------------- weights

function renderWeights(w) {
  $("#weights-version").textContent = `— v${w.version}`;
  $("#weights-meta").textContent =
    `set by ${w.actor || "?"}${w.comment ? ` (“${w.comment}”)` : ""} at ${new Date(w.created_at_ms).toLocaleString()}`;
  for (const k of WEIGHTS) {
    const input = $(`#w-${k}`);
    if (!ui.dirty.has(k) && document.activeElement !== input) input.value = w.weights[k];
  }
  $("#token-label").hidden = ui.dev;
}

function markDirty(e) {
  const k = e.target.name;
  if (!WEIGHTS.includes(k) || !ui.state) return;
  const current = ui.state.weights.weights[k];
  if (Number(e.target.value) === current) ui.dirty.delete(k);
  else ui.dirty.add(k);
  e.target.classList.toggle("dirty", ui.dirty.has(k));
}

async function saveWeights(e) {
  e.preventDefault();
  const status = $("#weights-status");
  const patch = {};
  for (const k of WEIGHTS) {
    const v = $(`#w-${k}`).value;
    if (ui.dirty.has(k)) patch[k] = v === "" ? null : Number(v);
  }
  if (!Object.keys(patch).length) {
    status.className = "muted";
    status.textContent = "nothing changed";
    return;
  }
  const comment = $("#w-comment").value.trim();
  if (comment) patch.comment = comment;
  const headers = { "content-type": "application/json" };
  const token = $("#w-token").value.trim();
  if (token) headers.authorization = `Bearer ${token}`;
  status.className = "muted";
  status.textContent = "saving…";
  try {
    const r = await fetch("/v1/weights", { method: "PUT", headers, body: JSON.stringify(patch) });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    ui.dirty.clear();
    document.querySelectorAll("#weights-form input.dirty").forEach((i) => i.classList.remove("dirty"));
    $("#w-comment").value = "";
    if (ui.state) ui.state.weights = body;
    renderWeights(body);
    status.className = "ok";
    status.textContent = `saved v${body.version}`;
    refresh();
  } catch (err) {
    status.className = "err";
    status.textContent = `not saved: ${err.message}`;
  }
}

function resetWeights() {
  ui.dirty.clear();
  document.querySelectorAll("#weights-form input.dirty").forEach((i) => i.classList.remove("dirty"));
  if (ui.state) renderWeights(ui.state.weights);
  $("#weights-status").textContent = "";
}

// ---------------------------------------------------------------- loop

function render() {
  if (!ui.state) return;
  const nodes = ui.state.nodes.slice().sort((a, b) => a.id.localeCompare(b.id));
  const counts = {};
  for (const n of nodes) counts[n.state] = (counts[n.state] || 0) + 1;
  const viewers = nodes.reduce((s, n) => s + ((n.load && n.load.viewers) || 0), 0);
  $("#summary").textContent =
    `${nodes.length} nodes: ` +
    Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ") +
    ` · ${viewers} viewers · weights v${ui.state.weights.version}` +
    (ui.state.dev ? " · dev mode" : "");
  renderMap(nodes);
  renderTable(nodes);
  renderWeights(ui.state.weights);
  renderRoutes();
}

async function refresh() {
  try {
    const r = await fetch("/ui/state", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    ui.state = await r.json();
    ui.dev = ui.state.dev;
    ui.refreshes++;
    document.body.dataset.refreshes = ui.refreshes;
    render();
    if (ui.selected) await loadRoutes();
    $("#refresh").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#refresh").textContent = `scheduler unreachable (${e.message}); retrying`;
  }
}

drawGraticule();
$("#weights-form").addEventListener("input", markDirty);
$("#weights-form").addEventListener("submit", saveWeights);
$("#reset-weights").addEventListener("click", resetWeights);
renderRoutes();
refresh();
setInterval(refresh, REFRESH_MS);
