// One specimen (/specimens/ID): what it is (model, state, notes), renaming, its operator
// and notes, making it current, closing and reopening, and its statistics.

import { api, patchJson, postJson } from "./api.js";
import { boot, stream } from "./app.js";
import { $, element, link, showError } from "./dom.js";
import { when } from "./format.js";
import { StatsView } from "./statsview.js";

const id = Number(document.body.dataset.specimenId);
const statsView = new StatsView();

function about(s) {
  const facts = [
    ["model", s.model_name ? s.model_name : "none yet (its first measured field decides)"],
    ["model ONNX sha256", s.model_sha256 || "–", "mono"], ["started", when(s.created)],
    ["state", s.is_current ? "current: new fields come here" : s.closed == null ? "open" : `closed ${when(s.closed)}`],
  ];
  if (s.folder) facts.push(["sub-folder", s.folder]);
  const items = facts.flatMap(([term, value, cls]) => [element("dt", term), element("dd", value, cls)]);
  if (s.derived_from != null) {
    const dd = element("dd");
    dd.append(link(`/specimens/${s.derived_from}`, `specimen #${s.derived_from}`), " (the model changed)");
    items.push(element("dt", "started from"), dd);
  }
  $("about").replaceChildren(...items);
}

async function load() {
  try {
    const stats = await api(`/api/specimens/${id}/stats`);
    const s = stats.specimen;
    document.title = `${s.name} · phasewatch`;
    $("specimen-title").textContent = `Specimen ${s.name}`;
    const badges = [element("span", s.is_current ? "current" : s.closed == null ? "open" : "closed", "badge"),
      element("span", `${stats.fields} fields counted`, "badge")];
    $("specimen-badges").replaceChildren(...badges);
    about(s);
    const form = $("edit");
    if (!form.contains(document.activeElement)) { // never overwrite what someone is typing
      for (const key of ["name", "operator", "notes"]) form.elements.namedItem(key).value = s[key];
    }
    $("make-current").disabled = Boolean(s.is_current) || s.closed != null;
    $("close").disabled = Boolean(s.is_current) || s.closed != null;
    $("reopen").disabled = s.closed == null;
    statsView.show(stats);
    showError($("specimen-error"), null);
  } catch (err) {
    showError($("specimen-error"), err);
  }
}

async function act(run) {
  try {
    await run();
    showError($("edit-error"), null);
  } catch (err) {
    showError($("edit-error"), err);
  }
}

$("edit").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  act(() => patchJson(`/api/specimens/${id}`, {
    name: form.elements.namedItem("name").value, operator: form.elements.namedItem("operator").value,
    notes: form.elements.namedItem("notes").value,
  }).then(() => document.activeElement.blur()));
});
$("make-current").addEventListener("click", () => act(() => postJson(`/api/specimens/${id}/current`)));
$("close").addEventListener("click", () => act(() => postJson(`/api/specimens/${id}/close`)));
$("reopen").addEventListener("click", () => act(() => postJson(`/api/specimens/${id}/reopen`)));
$("fields-link").href = `/fields?specimen=${id}`;
$("csv-link").href = `/export.csv?specimen=${id}`;
$("report-link").href = `/specimens/${id}/report`;

stream.on("open", load);
stream.on("specimen", (event) => event.id === id && load());
stream.on("field", (image) => image.specimen_id === id && load());
boot();
load();
