// Specimens side by side (/specimens/compare?ids=1,2): for a quantity and a class, each
// specimen's mean with its 95 % CI as a chart, and every class in a table.

import { api } from "./api.js";
import { boot, stream } from "./app.js";
import { drawOnResize, intervalChart } from "./chart.js";
import { $, element, link, showError, swatch } from "./dom.js";
import { sig, unitText } from "./format.js";

const ids = (new URLSearchParams(window.location.search).get("ids") || "").split(",")
  .map(Number).filter((n) => Number.isInteger(n) && n > 0);
let all = [];

function classesOf(quantity) {
  const seen = new Map();
  for (const stats of all) {
    for (const c of stats.classes) if (c.name in stats[quantity] && !seen.has(c.name)) seen.set(c.name, c);
    for (const name of Object.keys(stats[quantity])) if (!seen.has(name)) seen.set(name, { name, label: name });
  }
  return [...seen.values()];
}

function cell(s) {
  return s ? `${sig(s.mean)}${s.ci95 == null ? "" : ` ± ${sig(s.ci95)}`} (${s.n})` : "–";
}

function render() {
  const quantity = $("quantity").value;
  const classes = classesOf(quantity);
  const select = $("compare-class");
  const previous = select.value;
  select.replaceChildren(...classes.map((c) => {
    const option = element("option", c.label);
    option.value = c.name;
    return option;
  }));
  const main = all.map((s) => s.main_phase).find(Boolean);
  select.value = classes.some((c) => c.name === previous) ? previous : main || (classes[0] || {}).name || "";
  const name = select.value;
  const chosen = classes.find((c) => c.name === name);
  const units = all.map((s) => (s[quantity][name] || {}).unit).filter(Boolean);
  const unit = units.length ? unitText(units[0]) : "";
  const mixed = new Set(units).size > 1;
  const items = all.map((s) => ({ name: s.specimen.name, ...(s[quantity][name] || { mean: null, ci95: null, n: 0 }) }))
    .map((it) => ({ ...it, ci: it.ci95 }));
  if (chosen) {
    drawOnResize($("compare-chart"), () => intervalChart($("compare-chart"), {
      items, unitLabel: `${chosen.label}${unit ? ` (${unit})` : ""}`, percent: quantity === "fractions",
    }));
  }
  $("compare-caption").textContent = chosen ? `${chosen.label}: mean and 95 % CI per specimen` +
    (mixed ? "; careful: the specimens' units differ (some lack a pixel size)" : "") : "Nothing to compare.";
  const head = element("tr");
  head.append(element("th", "class"), ...all.map((s) => {
    const th = element("th");
    th.scope = "col";
    th.append(link(`/specimens/${s.specimen.id}`, s.specimen.name));
    return th;
  }));
  $("compare-table").tHead.replaceChildren(head);
  $("compare-table").tBodies[0].replaceChildren(...classes.map((c) => {
    const tr = element("tr");
    const first = element("td");
    first.append(swatch(c.colour), document.createTextNode(c.label));
    tr.append(first, ...all.map((s) => element("td", cell(s[quantity][c.name]))));
    return tr;
  }));
  $("compare-table-caption").textContent = `${$("quantity").selectedOptions[0].textContent}` +
    `${unit ? `, ${unit}` : ""}: mean ± 95 % CI half-width (n fields)`;
}

async function load() {
  if (ids.length === 0) {
    showError($("compare-error"), new Error("Pick specimens to compare on the specimens page (ids=1,2,...)."));
    return;
  }
  try {
    all = await Promise.all(ids.map((id) => api(`/api/specimens/${id}/stats`)));
    showError($("compare-error"), null);
    render();
  } catch (err) {
    showError($("compare-error"), err);
  }
}

$("quantity").addEventListener("change", render);
$("compare-class").addEventListener("change", render);
stream.on("open", load);
stream.on("specimen", (event) => ids.includes(event.id) && load());
boot();
load();
