// The parts of a field shown on the live view and on its own page (templates/_field.html):
// state badges, the viewer and its controls, the legend, the trust record with
// acceptance, and exclusion. A failed field shows its reason and no picture at all.
// A volume shows its middle slice first and a slider through all of them, each slice
// with its own fractions and trust (the canvas says which in data-slice).
// A field of a closed (signed-off) specimen is read-only: no exclude or accept controls,
// a note says who closed it and that reopening is done on the specimen's page.

import { api, postJson } from "./api.js";
import { $, element, link, showError, swatch } from "./dom.js";
import { fixed, sig, when } from "./format.js";
import { Viewer } from "./viewer.js";

const WHO_KEY = "phasewatch.who"; // the last operator who accepted a field, offered again
const ZOOM_STEP = 1.5;

// Records from before the trust record have trust null: trusted.
export const isFlagged = (image) => image.trust != null && !image.trust.ok;

const TEXT_INPUTS = /^(text|search|email|number|password|date|datetime-local|month|week|time|url|tel)$/;

// Whether a key press belongs to the control that has the focus (typing; arrows on a
// slider or radio button) or a dialog, or was taken already (the label editor's keys):
// then it is not a shortcut.
export function typing(event) {
  const target = event.target;
  if (event.defaultPrevented) return true;
  if (event.ctrlKey || event.metaKey || event.altKey || target.isContentEditable) return true;
  if (["TEXTAREA", "SELECT"].includes(target.tagName) || document.querySelector("dialog[open]")) return true;
  return target.tagName === "INPUT" && (TEXT_INPUTS.test(target.type) || event.key.startsWith("Arrow"));
}

export function stateBadges(image) {
  const badges = [];
  const badge = (text, cls) => badges.push(element("span", text, `badge ${cls}`));
  const names = { done: "measured", failed: "failed", pending: "queued", processing: "processing" };
  badge(names[image.state] || image.state, image.state);
  if (image.duplicate_of != null) {
    badges.push(link(`/images/${image.duplicate_of}`, `duplicate of #${image.duplicate_of}, not counted`,
      "badge duplicate"));
  }
  if (image.same_pixels_as != null) {
    badges.push(link(`/images/${image.same_pixels_as}`, image.accepted ? `same pixels as #${image.same_pixels_as} · accepted`
      : `⚠ likely the same field as #${image.same_pixels_as}`, "badge flagged"));
  }
  if (image.excluded) badge("excluded", "excluded");
  if (isFlagged(image)) badge(image.accepted ? "outside experience · accepted" : "⚠ outside experience", "flagged");
  if (image.slices != null) badge(`volume · ${image.slices} slices`, "volume");
  badges.push(link(`/specimens/${image.specimen_id}`, `specimen ${image.specimen}`, "badge"));
  return badges;
}

// Why a field waits for an operator's acceptance: the same pixels as an older field
// (store/queue.py), or outside the model's experience.
function doubtText(image) {
  if (image.same_pixels_as != null) {
    return `Likely the same field as #${image.same_pixels_as}: the same pixels, saved again (another bit depth or format)`;
  }
  const [first, ...more] = image.trust.reasons;
  return `Outside this model's experience: ${first || "no reason given"}` +
    (more.length ? ` (+${more.length} more)` : "");
}
const doubted = (image) => isFlagged(image) || image.same_pixels_as != null;

export class FieldView {
  // onChanged(image): after this view changed the field (accepted, excluded, ...).
  constructor(onChanged = () => {}) {
    this.field = null;
    this.countFlagged = false;
    this.closed = false; // the field's specimen is closed: read-only
    this.onChanged = onChanged;
    this.viewer = new Viewer($("picture"), (viewer) => this.showZoom(viewer));
    this.wire();
  }

  wire() {
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => this.setMode(radio.value));
    }
    $("opacity").addEventListener("input", () => {
      $("opacity-value").textContent = `${$("opacity").value} %`;
      this.viewer.setOpacity(Number($("opacity").value) / 100);
    });
    $("zoom-in").addEventListener("click", () => this.viewer.zoomBy(ZOOM_STEP));
    $("zoom-out").addEventListener("click", () => this.viewer.zoomBy(1 / ZOOM_STEP));
    $("zoom-fit").addEventListener("click", () => this.viewer.fit());
    $("zoom-one").addEventListener("click", () => this.viewer.actualSize());
    document.addEventListener("keydown", (event) => this.key(event));
    $("exclude").addEventListener("click", () => this.setExcluded(true));
    $("include").addEventListener("click", () => this.setExcluded(false));
    $("accept").addEventListener("click", () => this.openAccept());
    $("unaccept").addEventListener("click", () => this.change("unaccept"));
    $("accept-form").addEventListener("submit", (event) => this.submitAccept(event));
    $("accept-cancel").addEventListener("click", () => $("accept-dialog").close());
    $("slice").addEventListener("input", () => this.showSlice(Number($("slice").value)));
  }

  key(event) {
    if (typing(event) || !this.field || $("viewer").hidden) return;
    const modes = { 1: "overlay", 2: "original", 3: "classes" };
    const zooms = { "+": () => this.viewer.zoomBy(ZOOM_STEP), "=": () => this.viewer.zoomBy(ZOOM_STEP),
      "-": () => this.viewer.zoomBy(1 / ZOOM_STEP), 0: () => this.viewer.fit() };
    if (modes[event.key]) this.setMode(modes[event.key]);
    else if (zooms[event.key]) zooms[event.key]();
    else return;
    event.preventDefault();
  }

  setMode(mode) {
    const radio = document.querySelector(`input[name="mode"][value="${mode}"]`);
    if (radio.disabled) return;
    radio.checked = true;
    this.viewer.setMode(mode);
    $("opacity").disabled = mode !== "overlay" || !this.viewer.colourable;
  }

  showZoom(viewer) {
    $("zoom-value").textContent = viewer.fitted ? `fit (${Math.round(viewer.scale * 100)} %)`
      : `${Math.round(viewer.scale * 100)} %`;
  }

  // Show `field` (the API's image detail: with classes and provenance).
  async show(field) {
    // Asked each time: a specimen may be closed or reopened between two shows of a field.
    const specimen = await api(`/api/specimens/${field.specimen_id}`);
    this.field = field;
    this.closed = specimen.closed != null;
    const failed = field.state === "failed";
    $("field-badges").replaceChildren(...stateBadges(field));
    $("field-error").hidden = !failed;
    $("field-error").textContent = failed ? `Failed: ${field.error}` : "";
    this.showLegend(field);
    this.showReadOnly(specimen);
    this.showTrust(field);
    this.showActions(field);
    const pictured = !failed && Object.keys(field.pictures).length > 0;
    $("viewer").hidden = !pictured;
    if (!pictured) {
      this.viewer.clear(); // never leave another field's picture on screen
      return;
    }
    $("picture").setAttribute("aria-label", `${field.file}: micrograph and its classes`);
    const middle = this.showSliceControl(field);
    try {
      // The same field again (its state changed): keep the operator's zoom and place.
      const again = $("picture").dataset.field === String(field.id);
      if (await this.viewer.show(field, { keepView: again })) {
        if (middle == null) delete $("picture").dataset.slice;
        else $("picture").dataset.slice = middle;
        document.querySelector('input[name="mode"][value="classes"]').disabled = !this.viewer.colourable;
        this.setMode(this.viewer.colourable ? this.viewer.mode : "overlay");
      }
    } catch (err) {
      $("field-error").textContent = err.message;
      $("field-error").hidden = false;
    }
  }

  // The slider of a measured volume, at its middle slice (the one its pictures show);
  // returns that slice, or null for a field.
  showSliceControl(field) {
    const volume = field.slices != null && field.measurement ? field.measurement.volume : null;
    $("slice-control").hidden = !volume;
    if (!volume) return null;
    const middle = Math.floor(field.slices / 2);
    $("slice").max = String(field.slices - 1);
    $("slice").value = String(middle);
    this.showSliceFacts(volume, middle);
    return middle;
  }

  showSliceFacts(volume, index) {
    const spacing = volume.spacing_um;
    $("slice-value").textContent = `${index + 1} of ${volume.slices}` + (spacing ? ` · z = ${sig(index * spacing[0])} µm` : "");
    const slice = volume.per_slice[index];
    const labels = new Map(this.field.classes.map((c) => [c.name, c]));
    const phases = Object.entries(slice.fractions).filter(([name]) => (labels.get(name) || {}).role !== "background");
    const fractions = phases.map(([name, f]) => `${(labels.get(name) || {}).label || name} ${fixed(100 * f, 1)} %`);
    const trust = slice.trust.ok ? "inside the model's experience"
      : `⚠ outside the model's experience: ${slice.trust.reasons[0] || "no reason given"}`;
    $("slice-facts").textContent = `${fractions.join(", ")}; ${trust}`;
    $("slice-facts").classList.toggle("flagged", !slice.trust.ok);
  }

  async showSlice(index) {
    const field = this.field;
    if (!field || field.slices == null) return;
    this.showSliceFacts(field.measurement.volume, index);
    const base = `/api/images/${field.id}/slices/${index}`;
    const pictures = { preview: `${base}/preview.png`, classes: `${base}/classes.png` };
    try {
      if (await this.viewer.show({ ...field, pictures }, { keepView: true })) $("picture").dataset.slice = index;
    } catch (err) {
      $("field-error").textContent = err.message;
      $("field-error").hidden = false;
    }
  }

  showLegend(field) {
    const fractions = field.fractions || {};
    const items = field.state === "failed" ? [] : field.classes.map((c) => {
      const item = element("li");
      item.dataset.class = c.name;
      const value = c.name in fractions ? `${fixed(100 * fractions[c.name], 1)} %` : c.role === "excluded" ? "not counted" : "";
      item.append(swatch(c.colour), element("span", c.label, "name"), element("span", value, "value"));
      return item;
    });
    $("legend").replaceChildren(...items);
  }

  showTrust(field) {
    const flagged = doubted(field);
    $("trust").hidden = !flagged;
    $("trusted").hidden = isFlagged(field) || field.state !== "done";
    $("trusted").textContent = field.trust == null ? "No trust record (measured before trust records were kept)."
      : `Inside this model's experience (score ${fixed(field.trust.score, 3)}).`;
    if (!flagged) return;
    $("trust").classList.toggle("accepted", field.accepted);
    $("trust-reason").textContent = doubtText(field);
    $("trust-reason").title = field.trust ? field.trust.reasons.join("\n") : "";
    $("trust-state").textContent = field.accepted ? `Accepted by ${field.accepted_by}: ${field.accept_reason}`
      : this.countFlagged && field.same_pixels_as == null ? "Counted in the statistics although nobody has accepted it."
        : "Not counted in the statistics until someone accepts it.";
    // A duplicate's acceptance would be its original's: decide there.
    $("accept").hidden = field.accepted || this.closed;
    $("accept").disabled = field.duplicate_of != null;
    $("unaccept").hidden = !field.accepted || this.closed;
    $("unaccept").disabled = field.duplicate_of != null;
  }

  showActions(field) {
    // A duplicate is not counted anyway; excluding it would exclude its original.
    const measured = field.state === "done" && field.duplicate_of == null;
    $("exclude").disabled = !measured || field.excluded;
    $("exclude").hidden = field.excluded;
    $("include").hidden = !field.excluded;
    $("exclude-reason").value = field.exclude_reason || "";
    $("field-actions").hidden = field.state !== "done" || this.closed;
  }

  showReadOnly(specimen) {
    const note = $("field-read-only");
    note.hidden = !this.closed;
    if (!this.closed) return;
    note.replaceChildren(`Read-only: specimen ${specimen.name} was closed ${when(specimen.closed)} by ` +
      `${specimen.closed_by} (${specimen.close_meaning}), so its fields can be neither excluded nor accepted. `,
    link(`/specimens/${specimen.id}`, "Reopen it on its page"), " to change them.");
  }

  async change(action, body = {}) {
    const changed = await postJson(`/api/images/${this.field.id}/${action}`, body);
    this.onChanged(changed);
    return changed;
  }

  // x on the field page: exclude, or put back.
  toggleExcluded() {
    if (this.field && this.field.state === "done" && this.field.duplicate_of == null && !this.closed) {
      this.setExcluded(!this.field.excluded);
    }
  }

  setExcluded(exclude) {
    return this.change(exclude ? "exclude" : "include", exclude ? { reason: $("exclude-reason").value } : {});
  }

  openAccept() {
    const form = $("accept-form");
    form.reset();
    form.elements.namedItem("who").value = localStorage.getItem(WHO_KEY) || "";
    $("accept-field").textContent = `${this.field.file} (#${this.field.id}): ${doubtText(this.field)}`;
    showError($("accept-error"), null);
    $("accept-dialog").showModal();
  }

  async submitAccept(event) {
    event.preventDefault();
    const form = event.target;
    const who = form.elements.namedItem("who").value;
    try {
      await this.change("accept", { who, reason: form.elements.namedItem("reason").value });
      localStorage.setItem(WHO_KEY, who.trim());
      $("accept-dialog").close();
    } catch (err) {
      showError($("accept-error"), err);
    }
  }
}
