// One image's page (/images/ID; /fields/ID is its deprecated alias): its pictures, legend,
// measurements, trust and provenance; a volume's 3D measurements. Older and newer fields (links,
// ← →) change the address as they change the field (history.pushState), so every field shown has
// its own URL; x excludes or puts back.
// The label editor (label_editor.js) paints the field's labels over its picture.

import { api, ApiError } from "./api.js";
import { boot, stream } from "./app.js";
import { $, element, link } from "./dom.js";
import { fixed, plural, sig, sourceText, unitText, when } from "./format.js";
import { FieldView, typing } from "./fieldview.js";
import { LabelEditor } from "./label_editor.js";

const fieldView = new FieldView((image) => load(image.id));
const editor = new LabelEditor(fieldView);
let shown = null;

const idFromPath = () => Number(window.location.pathname.split("/").pop());

function measurementRows(field) {
  const record = field.measurement || {};
  const byName = new Map(field.classes.map((c) => [c.name, c]));
  const fractions = Object.entries(field.fractions || {}).map(([name, f]) => {
    const tr = element("tr");
    tr.dataset.class = name;
    tr.append(element("td", (byName.get(name) || {}).label || name), element("td", fixed(100 * f, 2), "value"));
    return tr;
  });
  $("fractions").tBodies[0].replaceChildren(...fractions);
  const particles = Object.entries(record.particles || {});
  const calibrated = record.pixel_size_um != null;
  $("density-head").textContent = calibrated ? "density, per mm²" : "density, per Mpx";
  const unit = unitText(particles.length ? particles[0][1].unit : calibrated ? "um" : "px");
  $("ecd-head").textContent = `mean ECD, ${unit}`;
  $("particles-caption").textContent = `Particles, sizes in ${unit} (whole particles only; border particles ` +
    "count half in the density)";
  $("particles").tBodies[0].replaceChildren(...particles.map(([name, p]) => {
    const tr = element("tr");
    tr.dataset.class = name;
    const spread = p.ecd_percentiles ? `${sig(p.ecd_percentiles.p10)}–${sig(p.ecd_percentiles.p90)}` : "–";
    const density = calibrated ? p.number_per_mm2 : p.number_per_mpx;
    for (const text of [(byName.get(name) || {}).label || name, String(p.count), String(p.border_count), sig(density),
      sig(p.mean_ecd), sig(p.median_ecd), sig(p.std_ecd), spread]) tr.append(element("td", text));
    tr.lastChild.className = "range"; // "0.0608–0.12" is read as one
    return tr;
  }));
  const measured = field.state === "done" && record.fractions;
  $("fractions").hidden = !measured;
  $("particles").hidden = !measured || particles.length === 0;
  $("no-measurements").hidden = Boolean(measured);
}

function volumePanel(field) {
  const volume = field.state === "done" && field.measurement ? field.measurement.volume : null;
  $("volume-panel").hidden = !volume;
  $("fractions-caption").textContent = volume ? "Volume fraction, % of the valid voxels" : "Area fraction, % of the valid area";
  $("fraction-head").textContent = volume ? "volume %" : "area %";
  if (!volume) return;
  const m = volume.measurements_3d;
  const [z, y, x] = m.shape;
  const s = volume.spacing_um;
  const notOk = volume.trust.slices_not_ok;
  $("volume-facts").textContent = [
    `${x} × ${y} px × ${z} slices`,
    s ? `voxel ${sig(s[2])} × ${sig(s[1])} × ${sig(s[0])} µm (${sourceText(volume.spacing_source)}), ` +
      `valid volume ${sig(m.valid_volume_mm3)} mm³` : "no spacing known: sizes in voxels",
    `segmented at ${sig(volume.timing.seconds_per_slice)} s per slice`,
    notOk.length ? `⚠ ${plural(notOk.length, "slice")} outside the model's experience (${notOk.map((i) => i + 1).join(", ")})`
      : "every slice inside the model's experience",
  ].join(" · ");
  $("esd-head").textContent = `mean ESD, ${s ? "µm" : "voxels"}`;
  const byName = new Map(field.classes.map((c) => [c.name, c]));
  $("volume-classes").tBodies[0].replaceChildren(...Object.entries(m.classes).map(([name, c]) => {
    const tr = element("tr");
    tr.dataset.class = name;
    const esd = s ? c.esd_um : c.esd_voxels;
    for (const text of [(byName.get(name) || {}).label || name, fixed(100 * c.volume_fraction, 2),
      `${c.components_26} (${c.components_6})`, String(c.components_touching_border),
      c.interconnectivity == null ? "–" : `${fixed(100 * c.interconnectivity, 1)} %`,
      `${c.euler_number} (${c.euler_number_6})`, sig(c.euler_number_per_mm3), sig(esd && esd.mean)]) {
      tr.append(element("td", text));
    }
    return tr;
  }));
}

function provenanceList(field) {
  const p = field.provenance;
  const facts = [
    ["file", p.file], ["path", p.path], ["sha256", p.sha256, "mono"], ["size", `${p.size.toLocaleString("en")} bytes`],
    ["captured", `${when(p.captured)} (file modification time)`], ["arrived", when(p.arrived)],
    ["processed", when(p.processed)],
    ["pixel size", p.pixel_size_um == null ? "unknown: sizes in pixels" : `${sig(p.pixel_size_um)} µm per pixel`],
    ["pixel size source", sourceText(p.pixel_size_source)],
    ["picture", p.width == null ? "–" : `${p.width} × ${p.height} px${p.slices != null ? `, ${p.slices} slices`
      : p.pages > 1 ? `, ${p.pages} pages` : ""}`],
    ["model", p.model || "–"], ["model ONNX sha256", p.onnx_sha256 || "not recorded", "mono"],
    ["model exported", p.exported_at || "–"], ["backend", p.backend || "–"],
    ["tiling", p.tiling ? tilingText(p.tiling) : "–"], ["software", p.software ? `phasewatch ${p.software}` : "–"],
  ];
  if (field.duplicate_of != null) facts.unshift(["result of", `#${field.duplicate_of} (same content)`]);
  $("provenance").replaceChildren(...facts.flatMap(([term, value, cls]) => {
    const dd = element("dd", value, cls);
    dd.dataset.fact = term;
    return [element("dt", term), dd];
  }));
}

function tilingText(t) {
  const base = `tile ${t.tile} px, halo ${t.halo} px, scale ${t.scale}`;
  return t.planned ? `${base}; planned per field (multiples of ${t.multiple} px, at most ` +
    `${sig(t.max_pixels / 1e6)} MP per call)` : base;
}

async function neighbours(id) {
  const [older, newer] = await Promise.all([api(`/api/images?before=${id}&limit=1`), api(`/api/images?after=${id}&limit=1`)]);
  for (const [anchor, found] of [[$("prev"), older[0]], [$("next"), newer[0]]]) {
    anchor.hidden = !found;
    if (found) anchor.href = `/images/${found.id}`;
  }
}

async function load(id) {
  try {
    const field = await api(`/api/images/${id}`);
    shown = field;
    document.title = `${field.file} (#${field.id}) · phasewatch`;
    $("field-title").textContent = `${field.file} (#${field.id})`;
    measurementRows(field);
    volumePanel(field);
    provenanceList(field);
    await Promise.all([fieldView.show(field).then(() => editor.show(field)), neighbours(id)]);
  } catch (err) {
    shown = null;
    $("field-title").textContent = err instanceof ApiError && err.status === 404 ? `There is no field #${id}` : err.message;
  }
}

function go(anchor) {
  if (anchor.hidden || !editor.mayLeave()) return;
  history.pushState(null, "", anchor.href);
  load(idFromPath());
}

for (const anchor of [$("prev"), $("next")]) {
  anchor.addEventListener("click", (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab: let it
    event.preventDefault();
    go(anchor);
  });
}
window.addEventListener("popstate", () => load(idFromPath()));
document.addEventListener("keydown", (event) => {
  if (typing(event)) return;
  if (event.key === "ArrowLeft") go($("prev"));
  else if (event.key === "ArrowRight") go($("next"));
  else if (event.key === "x") fieldView.toggleExcluded();
  else return;
  event.preventDefault();
});

stream.on("open", () => load(idFromPath()));
stream.on("field", (image) => {
  if (shown && (image.id === shown.id || image.id > shown.id)) load(shown.id); // its state, or a newer one now exists
});
stream.on("specimen", () => shown && load(shown.id));
boot();
load(idFromPath());
