// The label editor on a field's page (templates/_labels.html): the operator paints the
// classes of a material over the field's picture, starting from the model's class map
// or from nothing, and saves them (PUT /api/images/ID/labels: a one-channel PNG of class
// ids at the field's size, 255 = not labelled).
//
// The labels are kept at the field's size (labels.js) and shown through the viewer at
// screen resolution: a stroke changes the ids under it and recolours only the
// rectangle it touched, and the viewer redraws once per frame, so a 4096 × 4096 field
// paints as fast as a small one. The brush size is in screen pixels (what the hand
// feels), so zooming in paints finer. Pointer events: a mouse, a pen or a finger.
//
// The canvas says what the editor holds in data-labels-material and data-labels-dirty.

import { ApiError, apiBlob, putJson } from "./api.js";
import { $, element, showError, swatch } from "./dom.js";
import { fixed, plural } from "./format.js";
import { LabelRaster, UNLABELLED } from "./labels.js";
import { MaterialPicker, WHO_KEY } from "./materials.js";
import { base64, decodeIds, encodeGrey } from "./png.js";
import { typing } from "./fieldview.js";

const TOOL_KEYS = { b: "brush", e: "eraser", f: "fill", p: "polygon", h: "pan" };
const CLOSE_PX = 10; // a polygon's click this near its first corner (device px) closes it
const LASSO_STEP_PX = 3; // a lasso takes a point every this many device px
const SIZE_STEP = 1.25; // [ and ] change the brush by this factor

function rgba32(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA in one word
}

export class LabelEditor {
  // fieldView: the page's FieldView (its viewer is painted on).
  constructor(fieldView) {
    this.viewer = fieldView.viewer;
    this.field = null;
    this.active = false;
    this.raster = null;
    this.material = null;
    this.classIndex = 0;
    this.tool = "brush";
    this.polygon = null; // image points of a polygon being drawn
    this.stroke = null; // {last: image point} while a brush or lasso is down
    this.hover = null; // device point of the pointer, for the brush outline
    this.spaceDown = false;
    this.loading = 0;
    this.materials = new MaterialPicker($("label-material"), (material) => this.useMaterial(material));
    this.viewer.pans = (event) => !this.active || this.tool === "pan" || event.button === 1 || this.spaceDown;
    this.viewer.decorate = (context) => this.decorate(context);
    this.wire();
  }

  wire() {
    $("label-edit").addEventListener("click", () => this.setActive(!this.active));
    for (const radio of document.querySelectorAll('input[name="tool"]')) {
      radio.addEventListener("change", () => this.setTool(radio.value));
    }
    $("brush-size").addEventListener("input", () => this.showSize());
    $("label-undo").addEventListener("click", () => this.history("undo"));
    $("label-redo").addEventListener("click", () => this.history("redo"));
    $("label-from-model").addEventListener("click", () => this.fromModel());
    $("label-clear").addEventListener("click", () => this.clear());
    $("labels-only").addEventListener("change", () => this.showLayer());
    $("label-save").addEventListener("click", () => this.save());
    $("label-who").value = localStorage.getItem(WHO_KEY) || "";
    $("label-who").addEventListener("change", () => localStorage.setItem(WHO_KEY, $("label-who").value.trim()));
    const canvas = this.viewer.canvas;
    canvas.addEventListener("pointerdown", (event) => this.down(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    canvas.addEventListener("pointerup", (event) => this.up(event));
    canvas.addEventListener("pointercancel", () => this.up(null));
    canvas.addEventListener("pointerleave", () => {
      this.hover = null;
      this.viewer.requestDraw();
    });
    canvas.addEventListener("dblclick", () => this.tool === "polygon" && this.closePolygon());
    document.addEventListener("keydown", (event) => this.key(event), true); // before the page's own keys
    document.addEventListener("keyup", (event) => {
      if (event.key === " ") this.spaceDown = false;
    });
    window.addEventListener("beforeunload", (event) => {
      if (this.raster && this.raster.dirty) event.preventDefault(); // the browser asks before losing labels
    });
  }

  // Whether the page may show another field: unsaved labels are not thrown away unasked.
  mayLeave() {
    return !(this.raster && this.raster.dirty) || window.confirm("Leave this field without saving its labels?");
  }

  // The page shows `field` (after the viewer drew it).
  async show(field) {
    const another = !this.field || this.field.id !== field.id;
    this.field = field;
    $("label-edit").disabled = !this.viewer.layers;
    if (another) {
      this.raster = null;
      this.polygon = null;
      if (this.active) await this.load();
    }
  }

  async setActive(active) {
    this.active = active && Boolean(this.viewer.layers);
    $("label-edit").setAttribute("aria-pressed", String(this.active));
    $("label-edit").textContent = this.active ? "Stop editing" : "Edit labels";
    $("label-tools").hidden = !this.active;
    this.viewer.canvas.classList.toggle("editing", this.active);
    document.body.classList.toggle("editing-labels", this.active); // the tools beside the picture (app.css)
    if (this.active) this.viewer.canvas.scrollIntoView({ block: "nearest" });
    if (this.active && !this.raster) await this.load();
    else this.showLayer();
    this.showState();
  }

  // The materials, then the field's labels of the chosen one (or none yet).
  async load() {
    try {
      showError($("label-error"), null);
      const model = this.field.provenance.model;
      await this.materials.load(model);
    } catch (err) {
      showError($("label-error"), err);
    }
  }

  async useMaterial(material) {
    if (this.raster && this.raster.dirty && !window.confirm(`Drop the unsaved labels of ${this.material.name}?`)) {
      this.materials.choose(this.material.name);
      return;
    }
    const ticket = ++this.loading;
    this.material = material;
    this.classIndex = 0;
    this.palette = new Uint32Array(256);
    material.classes.forEach((c, index) => { this.palette[index] = rgba32(c.colour); });
    this.showClasses();
    showError($("label-error"), null);
    const { width, height } = this.viewer.layers;
    let ids = null;
    try {
      const blob = await apiBlob(`/api/images/${this.field.id}/labels?material=${encodeURIComponent(material.name)}`);
      if (blob) {
        const saved = await decodeIds(blob);
        if (saved.width !== width || saved.height !== height) {
          throw new Error(`the saved labels are ${saved.width} × ${saved.height} px, the field ${width} × ${height} px`);
        }
        ids = saved.ids;
      }
    } catch (err) {
      showError($("label-error"), err);
    }
    if (ticket !== this.loading) return;
    this.raster = new LabelRaster(width, height, ids);
    this.raster.onChange = (rect) => this.paintLayer(rect);
    this.layer = new OffscreenCanvas(width, height);
    this.layerContext = this.layer.getContext("2d");
    this.paintLayer([0, 0, width, height]);
    this.viewer.canvas.dataset.labelsMaterial = material.name;
    this.showLayer();
    this.showState();
  }

  // -- the picture ---------------------------------------------------------------------

  // Recolour the labels' layer inside rect (the raster changed there).
  paintLayer([x0, y0, x1, y1]) {
    const [width, ids] = [this.raster.width, this.raster.ids];
    const image = new ImageData(x1 - x0, y1 - y0);
    const words = new Uint32Array(image.data.buffer);
    for (let y = y0, k = 0; y < y1; y += 1) {
      for (let i = y * width + x0, end = y * width + x1; i < end; i += 1, k += 1) words[k] = this.palette[ids[i]];
    }
    this.layerContext.putImageData(image, x0, y0);
    this.viewer.requestDraw();
  }

  showLayer() {
    const shown = this.active && this.raster;
    this.viewer.setLabels(shown ? { layer: this.layer, only: $("labels-only").checked } : null);
  }

  decorate(context) {
    if (!this.active) return;
    const v = this.viewer;
    context.lineWidth = 2;
    if (this.polygon && this.polygon.length) {
      context.strokeStyle = this.colour();
      context.beginPath();
      for (const [x, y] of this.polygon) context.lineTo(x * v.scale + v.offset[0], y * v.scale + v.offset[1]);
      if (this.hover && !this.stroke) context.lineTo(...this.hover);
      context.stroke();
    }
    if (this.hover && (this.tool === "brush" || this.tool === "eraser")) {
      const radius = this.radius() * v.scale;
      for (const [colour, width] of [["#000", 3], [this.tool === "eraser" ? "#fff" : this.colour(), 1.5]]) {
        context.strokeStyle = colour;
        context.lineWidth = width;
        context.beginPath();
        context.arc(this.hover[0], this.hover[1], radius, 0, 2 * Math.PI);
        context.stroke();
      }
    }
  }

  colour() {
    return this.material ? this.material.classes[this.classIndex].colour : "#fff";
  }

  // The brush's radius in image pixels: its size is in CSS pixels on the screen.
  radius() {
    return (Number($("brush-size").value) / 2) * (window.devicePixelRatio || 1) / this.viewer.scale;
  }

  // -- pointer -------------------------------------------------------------------------

  editing(event) {
    return this.active && this.raster && !this.viewer.pans(event);
  }

  down(event) {
    if (!this.editing(event) || event.button !== 0) return;
    event.preventDefault();
    const point = this.viewer.toImage(...this.viewer.at(event));
    if (this.tool === "fill") {
      this.raster.fill(point[0], point[1], this.classIndex, this.modelIds());
      this.edited();
      return;
    }
    this.viewer.canvas.setPointerCapture(event.pointerId);
    if (this.tool === "polygon") {
      this.polygonDown(point, this.viewer.at(event));
      return;
    }
    this.raster.begin();
    this.stroke = { last: point };
    this.raster.stroke(point, point, this.radius(), this.value());
  }

  move(event) {
    if (!this.active) return;
    this.hover = this.viewer.at(event);
    if (this.stroke && this.raster) {
      // A pen reports more points than frames: take them all, so a fast stroke stays smooth.
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const e of events.length ? events : [event]) {
        const point = this.viewer.toImage(...this.viewer.at(e));
        if (this.tool === "polygon") this.lassoTo(point);
        else this.raster.stroke(this.stroke.last, point, this.radius(), this.value());
        this.stroke.last = point;
      }
    }
    this.viewer.requestDraw();
  }

  up(event) {
    if (!this.stroke) return;
    const lasso = this.tool === "polygon" && this.stroke.lasso;
    this.stroke = null;
    if (this.tool === "polygon") {
      if (lasso && event) this.closePolygon();
      return;
    }
    this.raster.end();
    this.edited();
  }

  value() {
    return this.tool === "eraser" ? UNLABELLED : this.classIndex;
  }

  polygonDown(point, device) {
    if (this.polygon && this.polygon.length >= 3) {
      const [fx, fy] = this.polygon[0];
      const v = this.viewer;
      if (Math.hypot(fx * v.scale + v.offset[0] - device[0], fy * v.scale + v.offset[1] - device[1]) <= CLOSE_PX) {
        this.closePolygon();
        return;
      }
    }
    if (!this.polygon) this.polygon = [];
    this.polygon.push(point);
    this.stroke = { last: point, from: device, lasso: false };
  }

  lassoTo(point) {
    const v = this.viewer;
    const last = this.polygon[this.polygon.length - 1];
    if (Math.hypot((point[0] - last[0]) * v.scale, (point[1] - last[1]) * v.scale) < LASSO_STEP_PX) return;
    this.polygon.push(point);
    this.stroke.lasso = this.polygon.length > 3;
  }

  closePolygon() {
    const points = this.polygon;
    this.polygon = null;
    if (points && points.length >= 3) {
      this.raster.polygon(points, this.classIndex);
      this.edited();
    }
    this.viewer.requestDraw();
  }

  // The model's class map, when it is one of this material's: its ids are this material's.
  modelIds() {
    return this.viewer.layers && this.viewer.layers.ids ? this.viewer.layers.ids : null;
  }

  // -- commands ------------------------------------------------------------------------

  key(event) {
    if (!this.active || !this.raster) return;
    const command = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (command && !event.altKey && ["z", "y", "s"].includes(key) && !$("material-dialog").open) {
      if (key === "s") this.save();
      else this.history(key === "y" || event.shiftKey ? "redo" : "undo");
    } else if (typing(event)) {
      return;
    } else if (event.key === " ") {
      this.spaceDown = true;
    } else if (TOOL_KEYS[key]) {
      this.setTool(TOOL_KEYS[key]);
    } else if (/^[0-9]$/.test(event.key)) {
      const index = (Number(event.key) + 9) % 10; // 1 is the first class, 0 the tenth
      if (index >= this.material.classes.length) return;
      this.pickClass(index);
    } else if (event.key === "[" || event.key === "]") {
      const size = Number($("brush-size").value) * (event.key === "]" ? SIZE_STEP : 1 / SIZE_STEP);
      $("brush-size").value = String(Math.round(size));
      this.showSize();
    } else if (key === "l") {
      $("labels-only").checked = !$("labels-only").checked;
      this.showLayer();
    } else if (event.key === "Escape" && this.polygon) {
      this.polygon = null;
      this.viewer.requestDraw();
    } else if (event.key === "Enter" && this.polygon) {
      this.closePolygon();
    } else {
      return;
    }
    event.preventDefault();
  }

  setTool(tool) {
    this.tool = tool;
    document.querySelector(`input[name="tool"][value="${tool}"]`).checked = true;
    this.polygon = null;
    this.viewer.canvas.dataset.tool = tool;
    this.viewer.requestDraw();
  }

  pickClass(index) {
    this.classIndex = index;
    for (const button of $("label-classes").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
    }
    if (this.tool === "eraser" || this.tool === "pan") this.setTool("brush");
  }

  showSize() {
    $("brush-size-value").textContent = `${$("brush-size").value} px`;
    this.viewer.requestDraw();
  }

  history(which) {
    if (this.raster[which]()) this.edited();
  }

  // Take the model's class map over as labels, class by class of the same name.
  fromModel() {
    const map = this.modelMapping();
    if (!map) return;
    const model = this.modelIds();
    this.raster.replaceAll((i) => map[model[i]]);
    this.edited();
  }

  // Model id -> this material's index, by class name (UNLABELLED where the material has none); null if none match.
  modelMapping() {
    const classes = (this.field && this.field.classes) || [];
    if (!this.material || !this.modelIds()) return null;
    const index = new Map(this.material.classes.map((c, i) => [c.name, i]));
    const map = new Uint8Array(256).fill(UNLABELLED);
    let shared = 0;
    for (const c of classes) {
      if (c.id != null && index.has(c.name)) {
        map[c.id] = index.get(c.name);
        shared += 1;
      }
    }
    return shared ? map : null;
  }

  clear() {
    this.raster.replaceAll(() => UNLABELLED);
    this.edited();
  }

  async save() {
    if (!this.raster) return;
    const who = $("label-who").value.trim();
    if (!who) {
      showError($("label-error"), new Error("Not saved: say who labelled (Your name)"));
      $("label-who").focus();
      return;
    }
    const { ids, width, height } = this.raster;
    const undoTop = this.raster.top();
    $("label-save").disabled = true;
    $("label-status").textContent = "saving…";
    try {
      const png = await encodeGrey(ids, width, height);
      await putJson(`/api/images/${this.field.id}/labels`, { material: this.material.name, png: base64(png), who });
      if (this.raster.top() === undoTop) this.raster.markSaved(); // nothing painted while it was sent
      showError($("label-error"), null);
      this.showState(`saved at ${new Date().toLocaleTimeString("en-GB")} (${fixed(png.length / 1024, 1)} kB)`);
    } catch (err) {
      showError($("label-error"), err instanceof ApiError ? new Error(`Not saved: ${err.message}`) : err);
      this.showState();
    }
  }

  // -- what the page says --------------------------------------------------------------

  edited() {
    this.showState();
  }

  showState(note = "") {
    const raster = this.raster;
    $("label-undo").disabled = !raster || !raster.canUndo;
    $("label-redo").disabled = !raster || !raster.canRedo;
    $("label-save").disabled = !raster || !raster.dirty;
    $("label-clear").disabled = !raster;
    const mapping = raster ? this.modelMapping() : null;
    $("label-from-model").disabled = !mapping;
    $("label-from-model").title = mapping ? "" : "The model's classes are not this material's (no class of the same name)";
    const canvas = this.viewer.canvas;
    canvas.dataset.labelsDirty = String(Boolean(raster && raster.dirty));
    if (!this.active || !raster) {
      $("label-status").textContent = "";
      return;
    }
    const counts = raster.counts();
    const labelled = raster.ids.length - counts[UNLABELLED];
    const classes = this.material.classes.filter((_, i) => counts[i] > 0).length;
    $("label-status").textContent = [
      `${this.material.name}: ${fixed((100 * labelled) / raster.ids.length, 1)} % of the field labelled` +
        (labelled ? `, ${plural(classes, "class", "classes")}` : ""),
      raster.dirty ? "unsaved changes" : note || "saved",
    ].join(" · ");
    for (const item of $("label-classes").children) {
      item.querySelector(".count").textContent = `${fixed((100 * counts[Number(item.dataset.index)]) / raster.ids.length, 1)} %`;
    }
  }

  showClasses() {
    const shown = new Map(((this.field && this.field.classes) || []).map((c) => [c.name, c.label])); // display names
    $("label-classes").replaceChildren(...this.material.classes.map((c, index) => {
      const item = element("li");
      item.dataset.index = String(index);
      const button = element("button", null, "class-pick");
      button.type = "button";
      button.dataset.index = String(index);
      button.setAttribute("aria-pressed", String(index === this.classIndex));
      if (index < 10) button.setAttribute("aria-keyshortcuts", String((index + 1) % 10));
      button.append(swatch(c.colour), element("span", shown.get(c.name) || c.name, "name"),
        ...(index < 10 ? [element("kbd", String((index + 1) % 10))] : []),
        ...(c.role === "excluded" ? [element("span", "excluded", "role")] : []), element("span", "", "count"));
      button.addEventListener("click", () => this.pickClass(index));
      item.append(button);
      return item;
    }));
  }
}
