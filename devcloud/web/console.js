/* devcloud console.
 *
 * Theory of operation. Everything shown comes from devcloud's REST API, read again
 * whenever /events (server-sent events) says the revision moved; the page keeps no
 * state of its own beyond what it read, the selected device, and the telemetry points
 * it has received for the charts (long-polled from /telemetry). Every button calls the
 * same REST route the CLI and DevCloudClient use.
 */
"use strict";

const POINTS_KEPT = 600;      // per series
const BACKLOG = 3000;         // telemetry messages read at start
const COLORS = ["#2f6fde", "#1f9d55", "#d97706", "#9333ea", "#db2777", "#0891b2", "#65a30d"];

const state = {
  dps: null,
  hubs: [],
  devices: [],
  enrollments: [],
  selected: null,              // device id
  twin: null,
  history: [],
  desiredDirty: false,
  lastSequence: 0,
  series: new Map(),           // device id -> Map(series key -> {sensor, quantity, unit, xs, ys})
  charts: new Map(),           // series key -> {plot, el} for the selected device
};

// -- REST ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = text; }
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

const q = (s) => encodeURIComponent(s);
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function toast(text, bad = false) {
  const node = el("div", { class: bad ? "toast bad" : "toast", text });
  $("toasts").append(node);
  setTimeout(() => node.remove(), bad ? 6000 : 3500);
}

// -- time ------------------------------------------------------------------------------

function parseTime(text) {
  if (!text || text.startsWith("0001-")) return null;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? null : ms;
}

function ago(text) {
  const ms = parseTime(text);
  if (ms === null) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}

function clock(text) {
  const ms = parseTime(text);
  return ms === null ? "" : new Date(ms).toLocaleTimeString([], { hour12: false });
}

// -- reading everything ----------------------------------------------------------------

let refreshing = null;
let refreshAgain = false;

function refresh() {
  if (refreshing) { refreshAgain = true; return refreshing; }
  refreshing = (async () => {
    try {
      do {
        refreshAgain = false;
        await readAll();
      } while (refreshAgain);
    } catch (error) {
      toast(`could not read devcloud: ${error.message}`, true);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function readAll() {
  const [dps, hubs, devices, groups, individual] = await Promise.all([
    api("GET", "/dps"), api("GET", "/hubs"), api("GET", "/devices"),
    api("GET", "/enrollmentGroups"), api("GET", "/enrollments"),
  ]);
  state.dps = dps;
  state.hubs = hubs;
  state.devices = devices;
  state.enrollments = [
    ...groups.map((g) => ({ kind: "group", id: g.enrollmentGroupId, body: g })),
    ...individual.map((e) => ({ kind: "individual", id: e.registrationId, body: e })),
  ];
  const device = selectedDevice();
  if (device) {
    const [twin, history] = await Promise.all([
      api("GET", `/twins/${q(device.deviceId)}?hub=${q(device.hub)}`).catch(() => null),
      device.registrationId
        ? api("GET", `/registrations/${q(device.registrationId)}/history`).catch(() => [])
        : Promise.resolve([]),
    ]);
    state.twin = twin;
    state.history = history;
  } else {
    state.twin = null;
    state.history = [];
  }
  render();
}

function selectedDevice() {
  if (state.selected === null) return null;
  const found = state.devices.filter((d) => d.deviceId === state.selected);
  return found.find((d) => d.connectionState === "Connected") || found[0] || null;
}

// -- rendering -------------------------------------------------------------------------

function render() {
  renderTopbar();
  renderDevices();
  renderDetail();
  renderEnrollments();
}

function renderTopbar() {
  const dps = state.dps;
  $("dps-summary").replaceChildren(
    el("span", {}, "ID scope ", el("b", { text: dps ? dps.idScope : "?" })),
    el("span", {}, "DPS ", el("b", { text: dps ? `${dps.host}:${dps.port}` : "?" })),
  );
  $("hub-summary").replaceChildren(...state.hubs.map((h) =>
    el("span", { title: h.hostname }, `${h.name} `, el("b", { text: String(h.connectedDevices) }), " connected")));
}

function statusPill(device) {
  if (device.status === "disabled") return el("span", { class: "pill bad" }, el("span", { class: "dot" }), "disabled");
  if (device.connectionState === "Connected") return el("span", { class: "pill ok" }, el("span", { class: "dot" }), "connected");
  return el("span", { class: "pill off" }, el("span", { class: "dot" }), "offline");
}

function renderDevices() {
  const rows = state.devices.map((d) => el("tr", {
    class: d.deviceId === state.selected ? "selected" : null,
    "data-device": d.deviceId,
    "data-hub": d.hub,
    onclick: () => select(d.deviceId),
  },
  el("td", { class: "device-id", text: d.deviceId }),
  el("td", {}, statusPill(d)),
  el("td", { class: "hub", text: d.hub }),
  el("td", { class: "model", title: d.modelId || "no model announced", text: d.modelId || "—" }),
  el("td", { class: "last-seen", "data-time": d.lastActivityTime, text: ago(d.lastActivityTime) })));
  $("devices").tBodies[0].replaceChildren(...rows);
  $("devices-empty").hidden = state.devices.length > 0;
  $("device-count").textContent = state.devices.length ? `${state.devices.length}` : "";
  if (state.selected === null && state.devices.length) select(state.devices[0].deviceId);
}

function select(deviceId) {
  if (state.selected === deviceId) return;
  state.selected = deviceId;
  state.desiredDirty = false;
  for (const { plot } of state.charts.values()) plot.destroy();
  state.charts.clear();
  $("charts").replaceChildren();
  $("method-response").textContent = "No method invoked yet.";
  $("method-response").className = "code response";
  refresh();
}

function renderDetail() {
  const device = selectedDevice();
  $("detail").hidden = !device;
  if (!device) return;
  $("device-title").textContent = device.deviceId;
  $("device-facts").replaceChildren(
    statusPill(device),
    el("span", {}, "hub ", el("b", { id: "fact-hub", text: device.hub })),
    el("span", {}, "model ", el("b", { text: device.modelId || "none announced" })),
    el("span", {}, "last seen ", el("b", { class: "last-seen", "data-time": device.lastActivityTime, text: ago(device.lastActivityTime) })),
    el("span", {}, device.connectionState === "Connected" ? "connected since " : "offline since ",
      el("b", { text: clock(device.connectionStateUpdatedTime) || "devcloud started" })),
  );
  const toggle = $("btn-toggle");
  toggle.textContent = device.status === "enabled" ? "Disable" : "Enable";
  toggle.dataset.next = device.status === "enabled" ? "disabled" : "enabled";
  renderTwin();
  renderHistory();
  renderCharts();
}

function withoutMeta(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj || {})) if (!k.startsWith("$")) out[k] = v;
  return out;
}

function isAck(v) { return v && typeof v === "object" && "ac" in v && "av" in v; }

function short(v) {
  if (v === undefined) return "—";
  const text = JSON.stringify(v);
  return text.length > 40 ? text.slice(0, 39) + "…" : text;
}

function renderTwin() {
  const twin = state.twin;
  const desired = twin ? withoutMeta(twin.properties.desired) : {};
  const reported = twin ? withoutMeta(twin.properties.reported) : {};
  $("desired-version").textContent = twin ? `$version ${twin.properties.desired.$version}` : "";
  $("reported-version").textContent = twin ? `$version ${twin.properties.reported.$version}` : "";
  if (!state.desiredDirty && document.activeElement !== $("desired-editor")) {
    $("desired-editor").value = JSON.stringify(desired, null, 2);
  }
  $("reported").textContent = JSON.stringify(reported, null, 2);
  const rows = [];
  const addRow = (name, want, ackValue) => {
    let ackCell;
    if (!ackValue) ackCell = el("span", { class: "pill off", text: "no ack" });
    else {
      const tone = ackValue.ac >= 200 && ackValue.ac < 300 ? "ok" : "bad";
      ackCell = el("span", { class: `pill ${tone}`, title: ackValue.ad || "" }, `${ackValue.ac} · v${ackValue.av}`);
    }
    rows.push(el("tr", { "data-property": name },
      el("td", { class: "code", text: name }),
      el("td", { class: "desired-value", text: short(want) }),
      el("td", { class: "reported-value", text: ackValue ? short(ackValue.value) : "—" }),
      el("td", { class: "ack" }, ackCell)));
  };
  const names = new Set([...Object.keys(desired), ...Object.keys(reported).filter((k) => isAck(reported[k]))]);
  for (const name of [...names].sort()) {
    const want = desired[name];
    const got = reported[name];
    if (isAck(got) || !(got && typeof got === "object")) {
      addRow(name, want, isAck(got) ? got : null);
    } else {
      // A component-like map (sensors.<name>.enabled): one row per acknowledged leaf.
      for (const [sub, ackValue] of Object.entries(got)) {
        for (const [leaf, leafAck] of Object.entries(ackValue || {})) {
          if (isAck(leafAck)) addRow(`${name}.${sub}.${leaf}`, want && want[sub] ? want[sub][leaf] : undefined, leafAck);
        }
      }
    }
  }
  $("writable").tBodies[0].replaceChildren(...rows);
  $("writable").hidden = rows.length === 0;
}

function renderHistory() {
  const rows = state.history.slice().reverse().map((e) => {
    let detail = "";
    if (e.event === "assigned") detail = `${e.hub} · ${e.substatus}`;
    else if (e.message) detail = `${e.errorCode}: ${e.message}`;
    const tone = e.status >= 400 ? "bad" : e.event === "assigned" ? "ok" : "off";
    return el("tr", { "data-event": e.event },
      el("td", { text: clock(e.timeUtc) }),
      el("td", {}, el("span", { class: `pill ${tone}`, text: e.event })),
      el("td", { text: String(e.status) }),
      el("td", { text: detail }));
  });
  $("dps-history").tBodies[0].replaceChildren(...rows);
  $("dps-history").hidden = rows.length === 0;
  $("dps-history-empty").hidden = rows.length > 0;
}

// -- enrollments -----------------------------------------------------------------------

const POLICIES = ["hashed", "static", "custom"];
const REPROVISION = {
  reprovisionandmigratedata: "migrate data",
  reprovisionandresetdata: "reset data",
  neverreprovision: "never",
};

function renderEnrollments() {
  const list = $("enrollments");
  // Keep the blocks the user is editing; rebuild the others.
  const kept = new Map([...list.querySelectorAll(".enrollment.editing")].map((n) => [n.dataset.key, n]));
  const blocks = state.enrollments.map((e) => {
    const key = `${e.kind}:${e.id}`;
    if (kept.has(key)) return kept.get(key);
    const b = e.body;
    const linked = new Set(b.iotHubs || []);
    const markEditing = (event) => event.target.closest(".enrollment").classList.add("editing");
    const field = (label, control) => el("label", { class: "field" }, el("span", { text: label }), control);
    const policy = el("select", { class: "allocation", onchange: markEditing },
      ...POLICIES.map((p) => el("option", { value: p, selected: p === b.allocationPolicy, text: p })));
    const reprovision = el("select", { class: "reprovision", onchange: markEditing },
      ...Object.entries(REPROVISION).map(([v, t]) => el("option", { value: v, selected: v === b.reprovisionPolicy.policy, text: t })));
    const status = el("select", { class: "provisioning", onchange: markEditing },
      ...["enabled", "disabled"].map((v) => el("option", { value: v, selected: v === b.provisioningStatus, text: v })));
    const hubs = el("div", { class: "hubs" }, ...state.hubs.map((h) => el("label", { class: "hub-choice" },
      el("input", { type: "checkbox", "data-hub": h.name, checked: linked.has(h.name), onchange: markEditing }), h.name)));
    const node = el("div", { class: "enrollment", "data-key": key, "data-enrollment": e.id });
    const save = el("button", { class: "btn small primary save", text: "Save", onclick: () => saveEnrollment(e, node) });
    node.append(
      el("div", { class: "enrollment-head" },
        el("div", {}, el("span", { class: "device-id", text: e.id }),
          el("span", { class: "kind", text: e.kind === "group" ? "enrollment group" : "individual enrollment" })),
        save),
      el("div", { class: "fields" },
        field("Allocation", policy), field("Reprovision", reprovision), field("Provisioning", status)),
      el("div", { class: "field wide" }, el("span", { text: "Linked hubs" }), hubs,
        el("span", { class: "hint", text: linked.size ? "" : "none ticked: every hub" })),
    );
    return node;
  });
  list.replaceChildren(...blocks);
  $("enrollments-empty").hidden = blocks.length > 0;
}

async function saveEnrollment(e, row) {
  const hubs = [...row.querySelectorAll("input[data-hub]")].filter((i) => i.checked).map((i) => i.dataset.hub);
  const patch = {
    allocationPolicy: row.querySelector("select.allocation").value,
    iotHubs: hubs,
    reprovisionPolicy: row.querySelector("select.reprovision").value,
    provisioningStatus: row.querySelector("select.provisioning").value,
  };
  const path = e.kind === "group" ? `/enrollmentGroups/${q(e.id)}` : `/enrollments/${q(e.id)}`;
  try {
    await api("PATCH", path, patch);
    row.classList.remove("editing");
    toast(`${e.id}: ${patch.allocationPolicy} over ${hubs.length ? hubs.join(", ") : "every hub"}`);
  } catch (error) {
    toast(`${e.id} not saved: ${error.message}`, true);
  }
  refresh();
}

// -- device actions --------------------------------------------------------------------

function deviceQuery(device) { return `${q(device.deviceId)}?hub=${q(device.hub)}`; }

async function invoke(methodName, payload) {
  const device = selectedDevice();
  if (!device) return;
  const out = $("method-response");
  out.className = "code response";
  out.textContent = `${methodName} … waiting for ${device.deviceId}`;
  try {
    const result = await api("POST", `/twins/${q(device.deviceId)}/methods?hub=${q(device.hub)}`, {
      methodName, payload, responseTimeoutInSeconds: 15,
    });
    out.className = `code response ${result.status < 300 ? "ok" : "bad"}`;
    out.textContent = `${methodName} → ${result.status}\n${JSON.stringify(result.payload, null, 2)}`;
  } catch (error) {
    out.className = "code response bad";
    out.textContent = `${methodName} failed: ${error.status || ""} ${error.message}`;
  }
}

function setupActions() {
  $("btn-invoke").addEventListener("click", () => {
    let payload;
    try { payload = JSON.parse($("method-payload").value || "null"); } catch (error) {
      toast(`the payload is not JSON: ${error.message}`, true);
      return;
    }
    invoke($("method-name").value.trim(), payload);
  });
  $("btn-reprovision").addEventListener("click", () => invoke("reprovision", {}));
  $("btn-toggle").addEventListener("click", async (event) => {
    const device = selectedDevice();
    if (!device) return;
    const next = event.target.dataset.next;
    try {
      await api("PATCH", `/devices/${deviceQuery(device)}`, { status: next });
      toast(`${device.deviceId} ${next}`);
    } catch (error) { toast(error.message, true); }
    refresh();
  });
  const del = $("btn-delete");
  del.addEventListener("click", async () => {
    const device = selectedDevice();
    if (!device) return;
    if (!del.classList.contains("armed")) {
      del.classList.add("armed");
      del.textContent = "Click to confirm";
      setTimeout(() => { del.classList.remove("armed"); del.textContent = "Delete"; }, 4000);
      return;
    }
    del.classList.remove("armed");
    del.textContent = "Delete";
    try {
      await api("DELETE", `/devices/${deviceQuery(device)}`);
      toast(`${device.deviceId} deleted from ${device.hub}`);
    } catch (error) { toast(error.message, true); }
    refresh();
  });
  const editor = $("desired-editor");
  editor.addEventListener("input", () => { state.desiredDirty = true; $("desired-status").textContent = "edited, not sent"; });
  $("btn-desired-reset").addEventListener("click", () => {
    state.desiredDirty = false;
    $("desired-status").textContent = "";
    editor.blur();
    renderTwin();
  });
  $("btn-desired-save").addEventListener("click", sendDesired);
}

async function sendDesired() {
  const device = selectedDevice();
  if (!device || !state.twin) return;
  let edited;
  try { edited = JSON.parse($("desired-editor").value || "{}"); } catch (error) {
    $("desired-status").textContent = `not JSON: ${error.message}`;
    return;
  }
  if (!edited || typeof edited !== "object" || Array.isArray(edited)) {
    $("desired-status").textContent = "desired properties must be a JSON object";
    return;
  }
  // The editor shows the whole desired document; send the merge patch that makes it so.
  const patch = { ...edited };
  for (const key of Object.keys(withoutMeta(state.twin.properties.desired))) {
    if (!(key in edited)) patch[key] = null;
  }
  try {
    const twin = await api("PATCH", `/twins/${deviceQuery(device)}`, { properties: { desired: patch } });
    state.desiredDirty = false;
    $("desired-status").textContent = `sent as $version ${twin.properties.desired.$version}`;
    $("desired-editor").blur();
  } catch (error) {
    $("desired-status").textContent = `refused: ${error.message}`;
  }
  refresh();
}

// -- telemetry and charts --------------------------------------------------------------

function ingest(message) {
  let body;
  try { body = JSON.parse(message.body); } catch (_) { return; }
  if (!body || typeof body !== "object") return;
  const t = (parseTime(body.timestamp) ?? parseTime(message.enqueuedTimeUtc) ?? Date.now()) / 1000;
  let perDevice = state.series.get(message.deviceId);
  if (!perDevice) { perDevice = new Map(); state.series.set(message.deviceId, perDevice); }
  const add = (sensor, quantity, value, unit) => {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    const key = sensor ? `${sensor} ${quantity}` : quantity;
    let s = perDevice.get(key);
    if (!s) { s = { sensor, quantity, unit: unit || "", xs: [], ys: [] }; perDevice.set(key, s); }
    s.xs.push(t);
    s.ys.push(value);
    if (s.xs.length > POINTS_KEPT) { s.xs.shift(); s.ys.shift(); }
  };
  if (body.readings && typeof body.readings === "object") {
    // The agent's shape: {"readings": {sensor: {quantity: {"value", "unit"}}}}
    for (const [sensor, values] of Object.entries(body.readings)) {
      for (const [quantity, reading] of Object.entries(values || {})) {
        if (reading && typeof reading === "object") add(sensor, quantity, reading.value, reading.unit);
        else add(sensor, quantity, reading, "");
      }
    }
  } else {
    // Any other device: chart its top-level numbers.
    for (const [name, value] of Object.entries(body)) add("", name, value, "");
  }
}

// Units as the agent names them (hal.sensor.UNITS), as a person reads them.
const UNIT_LABELS = { degC: "°C", "%RH": "% RH", hPa: "hPa", lx: "lx", V: "V" };

function quantityLabel(s) {
  // "temperature_c" with a unit -> "temperature": the suffix only repeats the unit.
  return s.unit ? s.quantity.replace(/_[a-z]+$/, "").replace(/_/g, " ") : s.quantity;
}

function unitLabel(unit) { return UNIT_LABELS[unit] ?? unit; }

const AXIS = { stroke: "#6b7585", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#e3e7ee" }, font: "11px system-ui, sans-serif" };

function timeOfDay(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

// Room for the widest tick label, so "1013.25" is never clipped.
function axisWidth(u, values) {
  const longest = Math.max(3, ...(values || []).map((v) => String(v).length));
  return 14 + longest * 7;
}

let chartsQueued = false;
function renderChartsSoon() {
  if (chartsQueued) return;
  chartsQueued = true;
  requestAnimationFrame(() => { chartsQueued = false; renderCharts(); });
}

function chartWidth() {
  const first = $("charts").querySelector(".chart");
  return Math.max(200, (first ? first.clientWidth : 300) - 12);
}

function renderCharts() {
  const device = selectedDevice();
  const perDevice = device ? state.series.get(device.deviceId) : null;
  const keys = perDevice ? [...perDevice.keys()].sort() : [];
  $("charts-empty").hidden = keys.length > 0;
  $("telemetry-note").textContent = keys.length ? `last ${POINTS_KEPT} points per series, live` : "";
  keys.forEach((key, index) => {
    const s = perDevice.get(key);
    let chart = state.charts.get(key);
    if (!chart) {
      const value = el("span", { class: "value" });
      const title = el("div", { class: "chart-title" },
        el("div", {}, el("b", { text: quantityLabel(s) }), s.sensor ? el("div", { class: "sensor", text: s.sensor }) : null),
        value);
      const holder = el("div", { class: "plot" });
      const node = el("div", { class: "chart", "data-series": key }, title, holder);
      $("charts").append(node);
      const color = COLORS[index % COLORS.length];
      const plot = new uPlot({
        width: chartWidth(),
        height: 130,
        legend: { show: false },
        cursor: { y: false },
        scales: { x: { time: true } },
        axes: [
          { ...AXIS, values: (u, ticks) => ticks.map(timeOfDay) },
          { ...AXIS, size: axisWidth },
        ],
        series: [{}, { label: key, stroke: color, width: 2, fill: color + "14", points: { show: false } }],
      }, [[], []], holder);
      chart = { plot, node, value };
      state.charts.set(key, chart);
    }
    chart.plot.setData([s.xs.slice(), s.ys.slice()]);
    chart.node.dataset.points = String(s.xs.length);
    const last = s.ys[s.ys.length - 1];
    chart.value.textContent = last === undefined ? "" : `${Number(last.toFixed(2))} ${unitLabel(s.unit)}`.trim();
  });
}

async function followTelemetry() {
  const first = await api("GET", "/telemetry?limit=1&since=0");
  const since = Math.max(0, first.lastSequenceNumber - BACKLOG);
  const backlog = await api("GET", `/telemetry?since=${since}&limit=${BACKLOG}`);
  backlog.messages.forEach(ingest);
  state.lastSequence = backlog.messages.length
    ? backlog.messages[backlog.messages.length - 1].sequenceNumber
    : first.lastSequenceNumber;
  renderChartsSoon();
  for (;;) {
    try {
      const page = await api("GET", `/telemetry?since=${state.lastSequence}&wait=20&limit=500`);
      for (const message of page.messages) {
        ingest(message);
        state.lastSequence = message.sequenceNumber;
      }
      if (page.messages.length) renderChartsSoon();
    } catch (error) {
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

// -- live updates ----------------------------------------------------------------------

function listen() {
  const live = $("live");
  const source = new EventSource("/events");
  source.addEventListener("change", () => refresh());
  source.addEventListener("open", () => { live.textContent = "live"; live.classList.add("on"); });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.classList.remove("on"); });
}

function tickClocks() {
  for (const node of document.querySelectorAll(".last-seen[data-time]")) node.textContent = ago(node.dataset.time);
}

window.addEventListener("resize", () => {
  const width = chartWidth();
  for (const { plot } of state.charts.values()) plot.setSize({ width, height: 130 });
});

setupActions();
listen();
refresh();
followTelemetry().catch((error) => toast(`telemetry: ${error.message}`, true));
setInterval(tickClocks, 1000);
