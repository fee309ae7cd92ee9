// A field's pictures on a canvas: the original micrograph (the daemon's display preview,
// drawn at the field's size), the class map in the model's colours, or the overlay of the
// two with an adjustable opacity (background classes stay untinted, as in the daemon's
// overlay picture); zoom to full resolution and beyond, and pan.
//
// The class colours are applied here, from classes.png (class ids) and the legend's
// palette, so the opacity can change without another picture from the server. A result
// recorded before its model's classes were (no palette) shows the daemon's overlay
// (overlay.jpg, or overlay.png when recorded before overlays were JPEGs).
// The canvas says what it shows in data-field and data-mode (tests and tools read them).
//
// The label editor (label_editor.js) adds a layer of its own over the picture
// (setLabels), draws its cursor in screen pixels (decorate), decides which pointer drags
// pan (pans) and keeps the class ids of the model's map (ids) to fill regions of.

const MAX_SCALE = 32; // device pixels per image pixel
const WHEEL_STEP = 1.2;
const PAN_STEP = 60; // device pixels per arrow key

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.addEventListener("load", () => resolve(image));
    image.addEventListener("error", () => reject(new Error(`${url}: the picture did not load`)));
    image.src = url;
  });
}

const optional = (url) => (url ? loadImage(url) : Promise.resolve(null));

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// Two layers from the class-id picture: `tint` (every class but the background ones,
// opaque) and `full` (every class); and `ids`, the class id of every pixel.
function colourLayers(ids, classes) {
  const { naturalWidth: width, naturalHeight: height } = ids;
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const context = scratch.getContext("2d", { willReadFrequently: true });
  context.drawImage(ids, 0, 0);
  const source = context.getImageData(0, 0, width, height).data;
  const colours = new Uint8ClampedArray(256 * 4);
  const tinted = new Uint8Array(256);
  for (const c of classes) {
    colours.set([...rgb(c.colour), 255], c.id * 4);
    tinted[c.id] = c.role === "background" ? 0 : 1;
  }
  const tint = new ImageData(width, height);
  const full = new ImageData(width, height);
  for (let p = 0; p < source.length; p += 4) {
    const id = source[p] * 4;
    for (let k = 0; k < 4; k += 1) full.data[p + k] = colours[id + k];
    if (tinted[source[p]]) for (let k = 0; k < 4; k += 1) tint.data[p + k] = colours[id + k];
  }
  const layer = (data) => {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(data, 0, 0);
    return canvas;
  };
  const idBytes = new Uint8Array(width * height);
  for (let p = 0, q = 0; q < idBytes.length; p += 4, q += 1) idBytes[q] = source[p];
  return { tint: layer(tint), full: layer(full), ids: idBytes };
}

export class Viewer {
  constructor(canvas, onChange = () => {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.onChange = onChange; // after a zoom: the page shows the scale
    this.layers = null;
    this.mode = "overlay";
    this.opacity = 0.45;
    this.scale = 1;
    this.offset = [0, 0];
    this.fitted = true;
    this.loading = 0;
    this.labels = null; // {layer, only}: the editor's labels over the picture; only: without the model's colours
    this.decorate = null; // (context): drawn last, in device pixels
    this.pans = () => true; // (pointerdown event): whether this drag pans
    this.frame = 0;
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.listen();
  }

  // Show a field (the API's image detail); resolves once drawn. A newer call wins: what
  // an older one loads is never drawn. `keepView`: the same zoom and place when the new
  // pictures have the size of the old (another slice of a volume), else fit.
  async show(field, { keepView = false } = {}) {
    const ticket = ++this.loading;
    const { pictures, classes } = field;
    const palette = classes.every((c) => c.id != null && c.colour) && pictures.classes ? classes : null;
    const [original, overlay, ids] = await Promise.all([
      optional(pictures.preview), optional(palette ? null : pictures.overlay), optional(palette && pictures.classes),
    ]);
    if (ticket !== this.loading) return false;
    const size = ids || overlay || original;
    if (!size) throw new Error(`field ${field.id} has no picture`);
    const same = this.layers && this.layers.width === size.naturalWidth && this.layers.height === size.naturalHeight;
    this.layers = {
      width: size.naturalWidth, height: size.naturalHeight, original, overlay, ...(ids ? colourLayers(ids, palette) : {}),
    };
    this.canvas.dataset.field = field.id;
    if (keepView && same && !this.fitted) this.draw();
    else this.fit();
    return true;
  }

  clear() {
    this.loading += 1;
    this.layers = null;
    delete this.canvas.dataset.field;
    this.draw();
  }

  // What the current field offers: a class map to colour (else no opacity, no class map view).
  get colourable() {
    return Boolean(this.layers && this.layers.tint);
  }

  setMode(mode) {
    this.mode = mode;
    this.draw();
  }

  setOpacity(opacity) {
    this.opacity = opacity;
    this.draw();
  }

  setLabels(labels) {
    this.labels = labels;
    this.requestDraw();
  }

  // Draw at the next frame, once however often asked (a stroke asks at every pointer move).
  requestDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  // -- geometry ---------------------------------------------------------------------------

  resize() {
    const box = this.canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const [width, height] = [Math.max(1, Math.round(box.width * ratio)), Math.max(1, Math.round(box.height * ratio))];
    if (width === this.canvas.width && height === this.canvas.height) return;
    const centre = this.toImage(this.canvas.width / 2, this.canvas.height / 2);
    this.canvas.width = width;
    this.canvas.height = height;
    if (this.fitted) this.fit();
    else this.centreOn(centre);
  }

  get fitScale() {
    if (!this.layers) return 1;
    return Math.min(this.canvas.width / this.layers.width, this.canvas.height / this.layers.height);
  }

  fit() {
    this.fitted = true;
    this.scale = this.fitScale;
    this.centreOn([this.layers ? this.layers.width / 2 : 0, this.layers ? this.layers.height / 2 : 0]);
  }

  // One image pixel per device pixel: the field at full resolution.
  actualSize() {
    this.zoomTo(1, this.canvas.width / 2, this.canvas.height / 2);
  }

  zoomBy(factor, x = this.canvas.width / 2, y = this.canvas.height / 2) {
    this.zoomTo(this.scale * factor, x, y);
  }

  zoomTo(scale, x, y) {
    if (!this.layers) return;
    const least = Math.min(this.fitScale, 1) / 4;
    const [ix, iy] = this.toImage(x, y);
    this.scale = Math.min(MAX_SCALE, Math.max(least, scale));
    this.offset = [x - ix * this.scale, y - iy * this.scale];
    this.fitted = false;
    this.draw();
  }

  panBy(dx, dy) {
    this.offset = [this.offset[0] + dx, this.offset[1] + dy];
    this.fitted = false;
    this.draw();
  }

  centreOn([ix, iy]) {
    this.offset = [this.canvas.width / 2 - ix * this.scale, this.canvas.height / 2 - iy * this.scale];
    this.draw();
  }

  toImage(x, y) {
    return [(x - this.offset[0]) / this.scale, (y - this.offset[1]) / this.scale];
  }

  // Where a pointer event is, in device pixels of the canvas.
  at(event) {
    const box = this.canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    return [(event.clientX - box.left) * ratio, (event.clientY - box.top) * ratio];
  }

  // -- drawing ----------------------------------------------------------------------------

  draw() {
    const c = this.context;
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.fillStyle = "#000";
    c.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.canvas.dataset.mode = this.mode;
    if (this.layers) {
      const { width, height, original, overlay, tint, full } = this.layers;
      c.setTransform(this.scale, 0, 0, this.scale, this.offset[0], this.offset[1]);
      c.imageSmoothingEnabled = this.scale < 2; // zoomed in: every image pixel a crisp square
      const put = (layer, alpha = 1) => {
        if (!layer) return;
        c.globalAlpha = alpha;
        c.drawImage(layer, 0, 0, width, height);
        c.globalAlpha = 1;
      };
      const labels = this.labels;
      if (labels && labels.only) put(original || overlay);
      else if (this.mode === "classes" && full) put(full);
      else if (this.mode === "original" || !tint) put(this.mode === "original" && original ? original : overlay || original);
      else {
        put(original);
        put(tint, this.opacity);
      }
      if (labels) put(labels.layer, Math.max(this.opacity, labels.only ? 0.6 : 0.35)); // never invisible
    }
    if (this.decorate) {
      c.setTransform(1, 0, 0, 1, 0, 0);
      this.decorate(c);
    }
    this.onChange(this);
  }

  // -- input ------------------------------------------------------------------------------

  listen() {
    const canvas = this.canvas;
    const at = (event) => this.at(event);
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.zoomBy(WHEEL_STEP ** (-event.deltaY / 100), ...at(event));
    }, { passive: false });
    let last = null;
    canvas.addEventListener("pointerdown", (event) => {
      if (!this.pans(event)) return;
      last = at(event);
      canvas.setPointerCapture(event.pointerId);
      canvas.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!last) return;
      const now = at(event);
      this.panBy(now[0] - last[0], now[1] - last[1]);
      last = now;
    });
    const release = () => {
      last = null;
      canvas.classList.remove("dragging");
    };
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", release);
    canvas.addEventListener("dblclick", (event) => this.pans(event) && this.zoomBy(2, ...at(event)));
    canvas.addEventListener("keydown", (event) => {
      const moves = { ArrowLeft: [PAN_STEP, 0], ArrowRight: [-PAN_STEP, 0], ArrowUp: [0, PAN_STEP], ArrowDown: [0, -PAN_STEP] };
      if (!moves[event.key]) return;
      event.preventDefault();
      event.stopPropagation(); // on the picture the arrows pan; elsewhere they may page
      this.panBy(...moves[event.key]);
    });
  }
}
