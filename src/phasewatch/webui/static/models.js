// The models page (/models): every model the appliance has, bundled and taught, with its
// parent, material and gate numbers (GET /api/models); the one measuring new fields is
// marked; any passed model can be made the active one (POST /api/models/NAME/activate)
// and the last change undone (POST /api/models/rollback).

import { api, postJson } from "./api.js";
import { boot } from "./app.js";
import { $, element, link, showError } from "./dom.js";
import { fixed, when } from "./format.js";
import { WHO_KEY } from "./materials.js";

const pct = (value) => (value == null ? "–" : fixed(100 * value, 1));

function who() {
  const name = $("models-who").value.trim();
  localStorage.setItem(WHO_KEY, name);
  return name;
}

async function change(url) {
  try {
    showError($("models-error"), null);
    await postJson(url, { who: who() });
    await load();
  } catch (err) {
    showError($("models-error"), err);
  }
}

function row(model, active) {
  const tr = element("tr", null, model.name === active ? "main" : "");
  tr.dataset.model = model.name;
  const name = element("td");
  name.append(link(`/models/${encodeURIComponent(model.name)}`, model.name));
  if (model.name === active) name.append(element("span", " · active", "ok-note"));
  const gate = model.gate;
  const held = gate ? gate.held_out : null;
  const reference = gate && gate.reference && gate.reference.measured ? gate.reference : null;
  const verdict = !gate ? "–" : gate.passed ? "passed" : "failed";
  const actions = element("td");
  if (model.name !== active && (!gate || gate.passed)) {
    const button = element("button", "Activate");
    button.type = "button";
    button.addEventListener("click", () => change(`/api/models/${encodeURIComponent(model.name)}/activate`));
    actions.append(button);
  }
  tr.append(name, element("td", model.parent || (model.source === "bundled" ? "bundled" : "–")),
    element("td", model.material || model.name), element("td", held ? pct(held.candidate.mean_iou) : "–"),
    element("td", held && held.base ? pct(held.base.mean_iou) : "–"),
    element("td", reference ? fixed(reference.forgetting_points, 2) : "–"),
    element("td", verdict, gate ? (gate.passed ? "ok-note" : "bad-note") : ""),
    element("td", model.created ? when(model.created) : "–"), actions);
  return tr;
}

async function load() {
  try {
    const { models, active } = await api("/api/models");
    $("models-active").textContent = `New fields are measured with ${active || "the configured model"}.`;
    $("models").tBodies[0].replaceChildren(...models.map((m) => row(m, active)));
  } catch (err) {
    showError($("models-error"), err);
  }
}

$("models-who").value = localStorage.getItem(WHO_KEY) || "";
$("rollback").addEventListener("click", () => change("/api/models/rollback"));
boot();
load();
