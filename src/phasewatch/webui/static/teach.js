// The teach page (/teach): pick a material, its labelled fields, a base model and a time
// budget, and start a teach job (POST /api/teach); follow it (GET /api/teach/JOB, once a
// second) with a progress bar and the server's estimate of the time left, its warnings
// (a weak gate), cancel it (DELETE), read its one-line
// reason when it fails, and when it is done the gate, old against new (gate.js), and
// the button that makes the new model measure new fields. The job's id is in the
// address (?job=ID): the page can be reloaded or sent on while the job runs.

import { api, deleteJson, postJson } from "./api.js";
import { boot } from "./app.js";
import { $, element, link, showError } from "./dom.js";
import { fixed, plural, when } from "./format.js";
import { showGate } from "./gate.js";
import { MaterialPicker, WHO_KEY } from "./materials.js";

const POLL_MS = 1000;
const WEAK_BELOW = 3; // fewer labelled fields: the gate holds out one at most
const ENDED = new Set(["done", "failed", "cancelled"]);
const STATES = { queued: "waiting to start", running: "running", done: "done", failed: "failed", cancelled: "cancelled" };

const picker = new MaterialPicker($("teach-material"), (material) => showFields(material));
let job = null; // {id, started (ms), material}
let timer = 0;

async function showFields(material) {
  const { fields } = await api(`/api/materials/${encodeURIComponent(material.name)}/fields`);
  $("teach-fields-none").hidden = fields.length > 0;
  $("teach-fields").replaceChildren(...fields.map((f) => {
    const item = element("li");
    const box = element("input");
    Object.assign(box, { type: "checkbox", name: "fields", value: String(f.file_id), checked: true });
    const label = element("label");
    label.append(box, ` ${f.file} `, element("span", `${fixed((100 * f.labelled_px) / (f.width * f.height), 1)} % labelled ` +
      `by ${f.who}, ${when(f.created)}`, "meta"));
    item.append(label, " ", link(`/images/${f.file_id}`, "open"));
    return item;
  }));
  for (const box of $("teach-fields").querySelectorAll("input")) box.addEventListener("change", showWeak);
  showWeak();
  await showBases(material);
}

function chosenFields() {
  return [...$("teach-fields").querySelectorAll("input:checked")].map((box) => Number(box.value));
}

function showWeak() {
  const n = chosenFields().length;
  $("teach-weak").hidden = n >= WEAK_BELOW;
  $("teach-weak").textContent = n === 0 ? "Pick at least one labelled field."
    : `Only ${plural(n, "labelled field")}: the gate will be weak (it holds out ${n > 1 ? "one" : "none"}). ` +
      "Label a few more for a judgement to rely on.";
}

// The bases: the bundled and taught models; the material's own first (a model of that name, or taught for it).
async function showBases(material) {
  const { models } = await api("/api/models");
  const own = (m) => m.name === material.name || m.material === material.name;
  const sorted = [...models.filter(own), ...models.filter((m) => !own(m))];
  $("teach-base").replaceChildren(...sorted.map((m) => {
    const option = element("option", m.source === "taught" ? `${m.name} (taught from ${m.parent})` : `${m.name} (bundled)`);
    option.value = m.name;
    return option;
  }));
}

async function start(event) {
  event.preventDefault();
  const who = $("teach-who").value.trim();
  localStorage.setItem(WHO_KEY, who);
  const body = { material: picker.current.name, base: $("teach-base").value, fields: chosenFields(),
    budget_min: Number($("teach-budget").value), who };
  if ($("teach-name").value.trim()) body.name = $("teach-name").value.trim();
  try {
    showError($("teach-error"), null);
    const answer = await postJson("/api/teach", body);
    history.replaceState(null, "", `/teach?job=${encodeURIComponent(answer.job)}`);
    follow(answer.job);
  } catch (err) {
    showError($("teach-error"), err);
  }
}

function follow(id) {
  job = { id, material: null };
  $("job-panel").hidden = false;
  $("gate-panel").hidden = true;
  $("job-activate").hidden = true;
  $("job-activated").hidden = true;
  showError($("job-error"), null);
  clearTimeout(timer);
  poll();
}

async function poll() {
  const id = job.id;
  try {
    const state = await api(`/api/teach/${encodeURIComponent(id)}`);
    if (!job || job.id !== id) return;
    showJob(state);
    if (!ENDED.has(state.state)) timer = setTimeout(poll, POLL_MS);
  } catch (err) {
    showError($("job-error"), err);
    timer = setTimeout(poll, POLL_MS * 5); // the service restarting: keep asking, slower
  }
}

function duration(seconds) {
  if (seconds == null) return "–";
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

async function showJob(state) {
  const progress = Math.max(0, Math.min(1, state.progress || 0));
  $("job-progress").value = progress;
  $("job-percent").textContent = `${fixed(100 * progress, 0)} %`;
  const ended = ENDED.has(state.state);
  $("job-title").textContent = `Teaching ${state.material || ""}: ${STATES[state.state] || state.state}`;
  $("job-facts").textContent = [`job ${job.id}`, state.base && `from ${state.base}`,
    state.fields && plural(state.fields.length, "field"), state.budget_min != null && `budget ${state.budget_min} min`,
  ].filter(Boolean).join(" · ");
  // The server's estimate of the time left (none until it has seen some progress).
  $("job-stage").textContent = [state.message, !ended && state.eta_s != null && `the whole job about ${duration(state.eta_s)} more`,
    ended ? `took ${duration(state.elapsed_s)}` : `${duration(state.elapsed_s)} so far`].filter(Boolean).join(" · ");
  $("job-warnings").replaceChildren(...(state.warnings || []).map((w) => element("li", w)));
  $("job-cancel").hidden = ended;
  if (state.state === "failed" || state.state === "cancelled") {
    showError($("job-error"), new Error(state.state === "failed" ? `Failed: ${state.error}` : "Cancelled."));
  }
  if (state.state !== "done" || !state.gate) return;
  $("job-model").hidden = !state.model;
  if (state.model) $("job-model").href = `/models/${encodeURIComponent(state.model)}`;
  $("job-activate").hidden = !state.gate.passed || !state.model;
  $("job-activate").dataset.model = state.model || "";
  const material = picker.list.find((m) => m.name === state.material) || picker.current;
  $("gate-panel").hidden = false;
  await showGate($("gate"), state.gate, material);
}

async function activate() {
  const name = $("job-activate").dataset.model;
  try {
    await postJson(`/api/models/${encodeURIComponent(name)}/activate`, { who: $("teach-who").value.trim() });
    $("job-activate").hidden = true;
    $("job-activated").hidden = false;
    $("job-activated").textContent = `${name} measures new fields from now on (a new specimen starts).`;
  } catch (err) {
    showError($("job-error"), err);
  }
}

$("teach-who").value = localStorage.getItem(WHO_KEY) || "";
$("teach-form").addEventListener("submit", start);
$("job-cancel").addEventListener("click", async () => {
  try {
    await deleteJson(`/api/teach/${encodeURIComponent(job.id)}`);
    poll();
  } catch (err) {
    showError($("job-error"), err);
  }
});
$("job-activate").addEventListener("click", activate);
boot();
picker.load().catch((err) => showError($("teach-error"), err));
const asked = new URLSearchParams(window.location.search).get("job");
if (asked) follow(asked);
