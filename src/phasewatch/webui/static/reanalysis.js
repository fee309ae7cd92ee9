// A re-analysis's comparison as the model page shows it: per specimen and class the old
// and new mean area % over the paired fields (same file content, both counted) with
// their 95 % CIs, and the paired difference new − old with its CI (the numbers of
// `phasewatch reanalyse-compare`, src/phasewatch/service/archive_compare.py); a
// difference whose CI excludes 0 is marked. Then the fields the old model flagged and
// the new one trusts.

import { element, link } from "./dom.js";
import { fixed, plural } from "./format.js";

const estimate = (s) => (s.mean == null ? "–" : `${fixed(s.mean, 2)}${s.ci95 == null ? "" : ` ± ${fixed(s.ci95, 2)}`}`);

function differenceCell(d) {
  const text = d.mean == null ? "–" : `${d.mean > 0 ? "+" : d.mean < 0 ? "−" : "±"}${fixed(Math.abs(d.mean), 2)}` +
    (d.ci95 == null ? " (no CI: one field)" : ` ± ${fixed(d.ci95, 2)}`);
  const changed = d.mean != null && d.ci95 != null && Math.abs(d.mean) > d.ci95;
  const cell = element("td", changed ? `◆ ${text}` : text);
  if (changed) {
    cell.className = "changed";
    cell.title = "the 95 % CI of the difference excludes 0: the models differ here";
  }
  return cell;
}

function specimenTable(specimen, labels) {
  const table = element("table", null, "reanalysis-table");
  table.append(element("caption", `${specimen.name}: ${plural(specimen.fields, "paired field")}` +
    (specimen.new_only ? `, ${specimen.new_only} only in the new run` : "")));
  const head = element("tr");
  for (const text of ["class", "old, area %", "new, area %", "new − old, points (paired)"]) {
    const th = element("th", text);
    th.scope = "col";
    head.append(th);
  }
  table.append(element("thead"));
  table.tHead.append(head);
  const body = element("tbody");
  if (!Object.keys(specimen.classes).length) {
    const cell = element("td", "The two models share no class name: their fractions cannot be paired class by class.");
    cell.className = "note";  // a sentence: wraps, unlike the class names of the first column
    cell.colSpan = 4;
    const tr = element("tr");
    tr.append(cell);
    body.append(tr);
  }
  for (const [name, s] of Object.entries(specimen.classes)) {
    const tr = element("tr");
    tr.dataset.class = name;
    tr.append(element("td", (labels && labels[name]) || name), element("td", estimate(s.old)), element("td", estimate(s.new)),
      differenceCell(s.difference));
    body.append(tr);
  }
  table.append(body);
  const wrap = element("div", null, "table-scroll");
  wrap.append(table);
  return wrap;
}

// comparison: {specimens: [{name, fields, new_only, classes}], old_only, newly_trusted: [{id, file}]}.
export function showComparison(container, comparison, labels = null) {
  const parts = [];
  if (!comparison.specimens.length) parts.push(element("p", "No field pairs: nothing both runs counted.", "notes"));
  parts.push(...comparison.specimens.map((s) => specimenTable(s, labels)));
  parts.push(element("p", "Mean ± 95 % CI half-width (Student t) over the paired fields; a difference marked ◆ has a CI " +
    "that excludes 0." + (comparison.old_only ? ` ${plural(comparison.old_only, "old field")} had no new one.` : ""), "notes"));
  const trusted = comparison.newly_trusted || [];
  parts.push(element("h3", `Flagged before, trusted now: ${trusted.length}`));
  if (trusted.length) {
    const list = element("ul", null, "newly-trusted");
    list.append(...trusted.map((f) => {
      const item = element("li");
      item.append(link(`/images/${f.id}`, `${f.file} (#${f.id})`));
      return item;
    }));
    parts.push(list);
  } else {
    parts.push(element("p", "None: every field the old model flagged is still flagged (or none was).", "notes"));
  }
  container.replaceChildren(...parts);
}
