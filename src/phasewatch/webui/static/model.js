// One model's page (/models/NAME): its facts (parent, material, labelled fields, budget,
// ONNX sha256), its gate, old against new (gate.js), and the re-analysis of a specimen
// with it: started here, followed until done, then compared with what was measured
// (reanalysis.js).

import { api, postJson } from "./api.js";
import { boot } from "./app.js";
import { $, element, showError } from "./dom.js";
import { fixed, when } from "./format.js";
import { showGate } from "./gate.js";
import { WHO_KEY, fetchMaterials } from "./materials.js";
import { showComparison } from "./reanalysis.js";

const POLL_MS = 1000;
const name = document.body.dataset.model;

async function showModel() {
  const model = await api(`/api/models/${encodeURIComponent(name)}`);
  const facts = [["source", model.source], ["parent", model.parent || "–"], ["material", model.material || model.name],
    ["labelled fields", model.fields ? model.fields.map((f) => `#${f.file_id}${f.held_out ? " (held out)" : ""}`).join(", ")
      : "–"], ["taught by", model.taught_by || "–"],
    ["budget", model.budget_min != null ? `${fixed(model.budget_min, 1)} min` : "–"],
    ["made", model.created ? when(model.created) : "–"], ["ONNX sha256", model.onnx_sha256 || "–", "mono"]];
  $("model-facts").replaceChildren(...facts.flatMap(([term, value, cls]) => [element("dt", term), element("dd", value, cls)]));
  if (model.gate) {
    const materials = await fetchMaterials();
    const material = materials.find((m) => m.name === (model.material || model.name));
    $("model-gate-panel").hidden = false;
    if (material) await showGate($("model-gate"), model.gate, material);
  }
}

async function showSpecimens() {
  const { specimens } = await api("/api/specimens");
  $("reanalysis-specimen").replaceChildren(...specimens.map((s) => {
    const option = element("option", s.model ? `${s.name} (${s.model})` : s.name);
    option.value = String(s.id);
    return option;
  }));
}

async function followReanalysis(job) {
  const state = await api(`/api/reanalyses/${encodeURIComponent(job)}`);
  $("reanalysis-state").textContent = state.state === "done" ? "" : `${state.state}: ${fixed(100 * (state.progress || 0), 0)} %`;
  if (state.state === "failed") showError($("reanalysis-error"), new Error(`Failed: ${state.error}`));
  else if (state.state === "done") showComparison($("reanalysis"), state.comparison);
  else setTimeout(() => followReanalysis(job).catch((err) => showError($("reanalysis-error"), err)), POLL_MS);
}

$("reanalysis-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    showError($("reanalysis-error"), null);
    const { job } = await postJson(`/api/models/${encodeURIComponent(name)}/reanalyse`,
      { specimen: Number($("reanalysis-specimen").value), who: localStorage.getItem(WHO_KEY) || "" });
    await followReanalysis(job);
  } catch (err) {
    showError($("reanalysis-error"), err);
  }
});
boot();
showModel().catch((err) => showError($("model-error"), err));
showSpecimens().catch((err) => showError($("reanalysis-error"), err));
