// One specimen (/specimens/ID): what it is (model, state, notes), renaming, its operator
// and notes, making it current, closing with an electronic signature and reopening (signed
// too), its specification limits and their templates, its audit trail, and its
// statistics with the verdict. A closed specimen's controls are disabled: it is read-only.

import { api, patchJson, postJson, putJson } from "./api.js";
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
    ["state", s.is_current ? "current: new fields come here" : s.closed == null ? "open"
      : `closed ${when(s.closed)} by ${s.closed_by}: ${s.close_meaning}`],
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
    const closed = s.closed != null;
    $("make-current").disabled = Boolean(s.is_current) || closed;
    $("close").disabled = closed;
    $("close").title = s.is_current ? "a new specimen starts for the next fields" : "";
    $("reopen").disabled = !closed;
    $("signed").hidden = !closed;
    $("signed").textContent = closed ? `Closed ${when(s.closed)} by ${s.closed_by}: ${s.close_meaning}. `
      + "Read-only: reopening is a signed act." : "";
    for (const node of document.querySelectorAll("#edit *, #limit-form *, #template-form *")) {
      if (node.matches("input, select, textarea, button")) node.disabled = closed;
    }
    document.body.classList.toggle("read-only", closed);
    statsView.show(stats);
    showLimits(stats, closed);
    showAudit();
    showError($("specimen-error"), null);
  } catch (err) {
    showError($("specimen-error"), err);
  }
}

const state = { limits: [] };
const MEASURES = { fractions: "area %", number_density: "number density", mean_ecd: "mean ECD" };
const whoOf = () => $("limit-form").elements.namedItem("who").value;

function openSign(act) {
  const form = $("sign");
  form.dataset.act = act;
  form.hidden = false;
  $("sign-title").textContent = act === "close" ? "Close with an electronic signature" : "Reopen: a signed act";
  $("sign-meaning").hidden = act !== "close";
  $("sign-reason").hidden = act === "close";
  form.elements.namedItem("reason").required = act !== "close";
  $("sign-note").textContent = act === "close"
    ? "Closing makes the specimen read-only; when it is the current one, a new specimen starts for the next fields."
    : "Reopening lets exclusions, acceptances and limits change again; it is recorded in the audit trail.";
  form.elements.namedItem("who").focus();
}

function showLimits(stats, closed) {
  const select = $("limit-form").elements.namedItem("class");
  const chosen = select.value;
  const known = stats.classes.length ? stats.classes : Object.keys(stats.fractions).map((n) => ({ name: n, label: n }));
  select.replaceChildren(...known.map((c) => {
    const option = element("option", c.label);
    option.value = c.name;
    return option;
  }));
  if (chosen) select.value = chosen;
  const labelOf = (name) => (known.find((c) => c.name === name) || { label: name }).label;
  state.limits = ((stats.verdict && stats.verdict.checks) || []).map((c) => ({
    class: c.class, measure: c.measure, lower: c.lower, upper: c.upper, target_ra_pct: c.target_ra_pct,
  }));
  $("limits").replaceChildren(...(stats.verdict ? stats.verdict.checks : []).map((c, i) => {
    const li = element("li", `${labelOf(c.class)}, ${MEASURES[c.measure]}: ${c.range} (target %RA ${c.target_ra_pct}) `);
    const remove = element("button", "Remove");
    remove.type = "button";
    remove.disabled = closed;
    remove.addEventListener("click", () => limitsAct(() => putJson(`/api/specimens/${id}/limits`,
      { limits: state.limits.filter((_, j) => j !== i), who: whoOf() })));
    li.append(remove);
    return li;
  }));
  if (!$("limits").children.length) $("limits").append(element("li", "No limits: no verdict.", "muted"));
}

async function loadTemplates() {
  const templates = await api("/api/limit-templates");
  const select = $("template-form").elements.namedItem("template");
  select.replaceChildren(...templates.map((t) => {
    const option = element("option", t.name);
    option.value = t.name;
    return option;
  }));
}

// A recorded value as a person reads it: JSON with a space after each comma and colon, so
// that it wraps between values instead of running on as one word.
const valueText = (v) => (v == null ? "–" : JSON.stringify(v, null, 1).replace(/\n\s*/g, " "));
const isRecord = (v) => v != null && typeof v === "object" && !Array.isArray(v);

// What a change did: of two records the keys of "after" whose value changed ("excluded: 0 →
// 1"; a key "before" lacks was null), else the whole before → after (the CSV and the report
// keep every key).
function changeText(before, after) {
  if (!isRecord(before) || !isRecord(after)) return `${valueText(before)} → ${valueText(after)}`;
  const keys = Object.keys(after).filter((key) => JSON.stringify(before[key] ?? null) !== JSON.stringify(after[key]));
  return keys.map((key) => `${key}: ${valueText(before[key])} → ${valueText(after[key])}`).join("; ") || "no change";
}

async function showAudit() {
  const rows = await api(`/api/specimens/${id}/audit`);
  const classes = ["seq", "when", "who", "what", "change", "why"];
  $("audit").tBodies[0].replaceChildren(...rows.map((r) => {
    const tr = element("tr");
    const cells = [String(r.seq), when(r.at), r.actor, `${r.action} ${r.subject}`, changeText(r.before, r.after),
      r.reason || ""];
    cells.forEach((cell, i) => tr.append(element("td", cell, classes[i])));
    return tr;
  }));
}

async function limitsAct(run) {
  try {
    await run();
    showError($("limits-error"), null);
  } catch (err) {
    showError($("limits-error"), err);
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
$("close").addEventListener("click", () => openSign("close"));
$("reopen").addEventListener("click", () => openSign("reopen"));
$("sign-cancel").addEventListener("click", () => { $("sign").hidden = true; });
$("sign").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const value = (name) => form.elements.namedItem(name).value;
  const body = { who: value("who"), token: value("token") };
  if (form.dataset.act === "close") body.meaning = value("meaning");
  else body.reason = value("reason");
  act(() => postJson(`/api/specimens/${id}/${form.dataset.act}`, body).then(() => {
    form.elements.namedItem("token").value = "";
    form.hidden = true;
  }));
});
$("limit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const value = (name) => form.elements.namedItem(name).value;
  const number = (name) => (value(name) === "" ? null : Number(value(name)));
  const limit = { class: value("class"), measure: value("measure"), lower: number("lower"), upper: number("upper"),
    target_ra_pct: number("target") };
  const others = state.limits.filter((l) => !(l.class === limit.class && l.measure === limit.measure));
  limitsAct(() => putJson(`/api/specimens/${id}/limits`, { limits: [...others, limit], who: value("who") }));
});
$("apply-template").addEventListener("click", () => {
  const template = $("template-form").elements.namedItem("template").value;
  limitsAct(() => putJson(`/api/specimens/${id}/limits`, { template, who: whoOf() }));
});
$("save-template").addEventListener("click", () => {
  const name = $("template-form").elements.namedItem("name").value;
  limitsAct(() => putJson("/api/limit-templates", { name, limits: state.limits, who: whoOf() }).then(loadTemplates));
});
$("audit-csv").href = `/api/specimens/${id}/audit.csv`;
$("fields-link").href = `/fields?specimen=${id}`;
$("csv-link").href = `/export.csv?specimen=${id}`;
$("report-link").href = `/specimens/${id}/report`;

stream.on("open", load);
stream.on("specimen", (event) => event.id === id && load());
stream.on("field", (image) => image.specimen_id === id && load());
boot();
load();
loadTemplates();
