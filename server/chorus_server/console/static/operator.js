// Operator view: adapters (versions, pin/unpin, delete), uploads, and a live panel of key metrics.
import { api, headers, say } from "./api.js";

const COLUMNS = ["ID", "Version", "Visibility", "Resident"];
let reloadAdapters = async () => {};
let metricsTimer = 0;

function button(label, action, secondary = true) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  if (secondary) element.className = "secondary";
  element.addEventListener("click", action);
  return element;
}

async function act(message, work) {
  try {
    await work();
    say(message);
    await refreshOperator();
    await reloadAdapters();
  } catch (error) {
    say(error.message, true);
  }
}

async function listAdapters() {
  const body = document.querySelector("#adapters tbody");
  const page = await api("/v1/adapters?limit=200");
  body.replaceChildren(...page.data.map((adapter) => {
    const row = document.createElement("tr");
    row.dataset.id = adapter.id;
    const values = [adapter.id, String(adapter.version), adapter.visibility, adapter.resident ? "yes" : "no"];
    values.forEach((value, i) => {
      const cell = document.createElement("td");
      cell.textContent = value;
      cell.dataset.label = COLUMNS[i]; // the label a phone-width card shows before the value
      row.append(cell);
    });
    const actions = document.createElement("td");
    actions.dataset.label = "Actions";
    const ref = encodeURIComponent(adapter.id).replace("%2F", "/");
    actions.append(button("Versions", async () => {
      const info = await api(`/v1/adapters/${ref}`);
      document.getElementById("versions").textContent = `${info.id}: versions ${info.versions.join(", ")}`;
    }));
    if (adapter.changeable) { // the server says what this key may change: only those actions are offered
      actions.append(
        adapter.pinned
          ? button("Unpin", () => act(`unpinned ${adapter.id}`, () => api(`/v1/adapters/${ref}/unpin`, { method: "POST" })))
          : button("Pin", () => act(`pinned ${adapter.id}`, () => api(`/v1/adapters/${ref}/pin`, { method: "POST" }))),
        button("Delete", () => {
          if (confirm(`Delete every version of ${adapter.id}?`)) {
            act(`deleted ${adapter.id}`, () => api(`/v1/adapters/${ref}`, { method: "DELETE" }));
          }
        }),
      );
    }
    row.append(actions);
    return row;
  }));
}

// A few series from Prometheus' text format: sums over label sets.
export function parseMetrics(text) {
  const totals = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (match) totals[match[1]] = (totals[match[1]] || 0) + Number(match[3]);
  }
  return totals;
}

async function showMetrics() {
  const list = document.getElementById("metrics");
  const response = await fetch("/metrics", { headers: headers() });
  if (!response.ok) {
    list.textContent = "Metrics need a key with the metrics or admin role.";
    return;
  }
  const m = parseMetrics(await response.text());
  const latency = m.chorus_request_duration_seconds_count
    ? (1000 * m.chorus_request_duration_seconds_sum) / m.chorus_request_duration_seconds_count : 0;
  const lookups = (m.chorus_adapter_cache_hits_total || 0) + (m.chorus_adapter_cache_misses_total || 0);
  const shown = [
    ["Requests", String(m.chorus_requests_total || 0)],
    ["Mean latency", `${latency.toFixed(0)} ms`],
    ["Queue", `${m.chorus_queue_depth || 0} windows`],
    ["Queued audio", `${(m.chorus_queue_audio_seconds || 0).toFixed(1)} s`],
    ["Cache hit rate", lookups ? `${((100 * (m.chorus_adapter_cache_hits_total || 0)) / lookups).toFixed(0)} %` : "–"],
    ["Resident adapters", String(m.chorus_adapters_resident || 0)],
    ["Live sessions", String(m.chorus_realtime_sessions || 0)],
  ];
  list.replaceChildren(...shown.map(([name, value]) => {
    const item = document.createElement("div");
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = name;
    detail.textContent = value;
    detail.dataset.metric = name;
    item.append(term, detail);
    return item;
  }));
}

// The table is rebuilt on opening the view and after each action (not on a timer: focus stays where it is);
// the metrics panel refreshes every 3 s while the view is open.
export async function refreshOperator() {
  if (document.getElementById("panel-operator").hidden) return;
  try {
    await listAdapters();
  } catch (error) {
    say(`adapters: ${error.message}`, true);
  }
  await pollMetrics();
}

async function pollMetrics() {
  clearTimeout(metricsTimer);
  if (document.getElementById("panel-operator").hidden) return;
  await showMetrics();
  metricsTimer = setTimeout(pollMetrics, 3000);
}

export function setUpOperator(onAdaptersChanged) {
  reloadAdapters = onAdaptersChanged;
  document.getElementById("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = document.getElementById("upload-name").value.trim();
    const visibility = document.getElementById("upload-visibility").value;
    const file = document.getElementById("upload-file").files[0];
    const query = visibility ? `?visibility=${visibility}` : "";
    act(`uploaded ${name}`, () => api(`/v1/adapters/${name}${query}`, {
      method: "PUT",
      body: file,
      headers: { "Content-Type": "application/octet-stream" },
    }));
  });
}
