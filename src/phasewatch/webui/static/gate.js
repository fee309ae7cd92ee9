// A taught model's gate (the teach job's verdict, kept in the model's manifest) as the
// pages show it: the verdict and its reasons, old (the base) against new (the candidate)
// per class on the held-out fields and on the base's reference set (forgetting), and the
// held-out fields themselves: the picture with the operator's labels beside the overlay
// of the model that measured it.

import { api, apiBlob } from "./api.js";
import { element, link, swatch } from "./dom.js";
import { fixed } from "./format.js";
import { decodeIds } from "./png.js";

const pct = (value) => (value == null ? "–" : fixed(100 * value, 1));
const points = (value) => (value == null ? "–" : fixed(value, 2));
const signed = (value) => (value == null ? "–" : `${value > 0 ? "+" : value < 0 ? "−" : "±"}${fixed(Math.abs(value), 1)}`);

// One table: per class IoU and fraction error of the base (when scored) and the candidate.
function scoreTable(caption, scores, colours) {
  const { candidate, base } = scores;
  const table = element("table", null, "gate-table");
  table.append(element("caption", caption));
  const head = element("tr");
  const columns = base ? ["class", "IoU % old", "IoU % new", "Δ points", "fraction error old", "new"]
    : ["class", "IoU % new", "fraction error, points"];
  for (const text of columns) {
    const th = element("th", text);
    th.scope = "col";
    head.append(th);
  }
  table.append(element("thead"));
  table.tHead.append(head);
  const body = element("tbody");
  const row = (name, cells, cls) => {
    const tr = element("tr", null, cls);
    tr.dataset.class = name;
    const first = element("td");
    if (colours[name]) first.append(swatch(colours[name]));
    first.append(name);
    tr.append(first, ...cells.map((text) => element("td", text)));
    body.append(tr);
  };
  const diff = (a, b) => (a == null || b == null ? null : 100 * (b - a));
  for (const name of Object.keys(candidate.per_class_iou)) {
    const newIou = candidate.per_class_iou[name];
    const newError = candidate.fraction_error_points[name];
    row(name, base ? [pct(base.per_class_iou[name]), pct(newIou), signed(diff(base.per_class_iou[name], newIou)),
      points(base.fraction_error_points[name]), points(newError)] : [pct(newIou), points(newError)]);
  }
  row("mean (mIoU)", base ? [pct(base.mean_iou), pct(candidate.mean_iou), signed(diff(base.mean_iou, candidate.mean_iou)),
    "", ""] : [pct(candidate.mean_iou), ""], "main");
  table.append(body);
  const trusted = base ? `trusted: old ${base.trusted}, new ${candidate.trusted} of ${candidate.fields}`
    : `trusted by the new model: ${candidate.trusted} of ${candidate.fields}`;
  const wrap = element("div", null, "table-scroll");
  wrap.append(table, element("p", `${candidate.fields} field(s); ${trusted}. Fraction error: mean |predicted − labelled| ` +
    "area %, over the labelled pixels.", "notes"));
  return wrap;
}

// Colour a field's labels (class ids, 255 none) into a canvas, over nothing.
async function labelsCanvas(fileId, material, classes) {
  const blob = await apiBlob(`/api/images/${fileId}/labels?material=${encodeURIComponent(material)}`);
  if (!blob) return element("p", "no labels", "notes");
  const { ids, width, height } = await decodeIds(blob);
  const canvas = element("canvas", null, "gate-picture");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const rgb = classes.map((c) => [1, 3, 5].map((i) => parseInt(c.colour.slice(i, i + 2), 16)));
  for (let i = 0; i < ids.length; i += 1) {
    const colour = rgb[ids[i]];
    if (colour) image.data.set([...colour, 255], i * 4);
  }
  context.putImageData(image, 0, 0);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `labels of field ${fileId}`);
  return canvas;
}

async function heldOutCard(fileId, material) {
  const item = element("li", null, "gate-field");
  try {
    const field = await api(`/api/images/${fileId}`);
    const heading = link(`/images/${fileId}`, `${field.file} (#${fileId})`);
    const overlay = element("img", null, "gate-picture");
    overlay.src = field.pictures.overlay || field.pictures.preview || "";
    overlay.alt = `overlay of ${field.provenance.model || "the model"} on ${field.file}`;
    const labelled = await labelsCanvas(fileId, material.name, material.classes);
    const model = element("figure");
    model.append(overlay, element("figcaption", `as measured by ${field.provenance.model || "–"}`));
    const labels = element("figure");
    labels.append(labelled, element("figcaption", "labelled"));
    item.append(heading, model, labels);
  } catch (err) {
    item.append(element("p", `#${fileId}: ${err.message}`, "error"));
  }
  return item;
}

// Fill `container` with the gate of a model taught for `material` ({name, classes}).
export async function showGate(container, gate, material) {
  const colours = Object.fromEntries(material.classes.map((c) => [c.name, c.colour]));
  const verdict = element("p", gate.passed ? "✓ Gate passed" : "✗ Gate failed", gate.passed ? "gate-verdict ok" : "gate-verdict bad");
  const parts = [verdict, element("p", `Rule: ${gate.rule}.`, "notes")];
  if (gate.reasons && gate.reasons.length) {
    const reasons = element("ul", null, "gate-reasons");
    reasons.append(...gate.reasons.map((r) => element("li", r)));
    parts.push(reasons);
  }
  const caption = gate.held_out.base ? "Held-out labelled fields: old (the base) and new per class"
    : "Held-out labelled fields: the new model per class (the base has other classes)";
  parts.push(element("h3", "Held-out fields"), scoreTable(caption, gate.held_out, colours));
  const reference = gate.reference || {};
  parts.push(element("h3", "The base's reference set (forgetting)"));
  if (reference.measured) {
    parts.push(element("p", `Lost ${fixed(reference.forgetting_points, 2)} points mIoU on ${reference.fields} reference ` +
      `field(s) (at most ${fixed(reference.allowed_points, 0)} allowed).`, reference.forgetting_points > reference.allowed_points
      ? "error" : "notes"), scoreTable("The base's reference set", reference, colours));
  } else {
    parts.push(element("p", reference.reason || "not measured", "notes"));
  }
  const fields = element("ul", null, "gate-fields");
  parts.push(element("h3", "Held-out fields, labelled and as measured"), fields);
  container.replaceChildren(...parts);
  fields.append(...await Promise.all((gate.held_out.images || []).map((id) => heldOutCard(id, material))));
}
