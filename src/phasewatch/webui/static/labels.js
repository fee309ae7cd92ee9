// A field's labels: one class id per pixel at the field's size (UNLABELLED where the
// operator said nothing: training ignores those pixels), the edits that change them
// (brush and eraser strokes, a fill of a connected region, a polygon, the model's map
// taken over, everything cleared) and undo/redo.
//
// Undo keeps, per edit, the old ids of the 64 × 64 tiles the edit touched, not of the
// whole field: a brush stroke on a 4096 × 4096 field costs a few kilobytes of history.
// Every change reports the rectangle it changed (onChange), so the editor recolours only that.

export const UNLABELLED = 255;
const TILE = 64;
const HISTORY_BYTES = 192 * 1024 * 1024; // the oldest undo steps go beyond this

// A rectangle [x0, y0, x1, y1) (end exclusive), or null for nothing.
const union = (a, b) => (!a ? b : !b ? a
  : [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])]);

export class LabelRaster {
  constructor(width, height, ids = null) {
    if (ids && ids.length !== width * height) throw new Error(`labels of ${ids.length} px for a ${width} × ${height} field`);
    this.width = width;
    this.height = height;
    this.ids = ids || new Uint8Array(width * height).fill(UNLABELLED);
    this.tilesX = Math.ceil(width / TILE);
    this.undoSteps = [];
    this.redoSteps = [];
    this.historyBytes = 0;
    this.step = null; // the edit under way: tile index -> its ids before the edit
    this.saved = null; // the undo step on top when the labels were last saved (markSaved)
    this.onChange = () => {};
  }

  get canUndo() {
    return this.undoSteps.length > 0;
  }

  get canRedo() {
    return this.redoSteps.length > 0;
  }

  // Whether the labels differ from what was last saved (or loaded): another step on top of the undo stack.
  get dirty() {
    return this.top() !== this.saved;
  }

  markSaved() {
    this.saved = this.top();
  }

  top() {
    return this.undoSteps.length ? this.undoSteps[this.undoSteps.length - 1] : null;
  }

  // -- edits: begin(), any number of drawing calls, end() = one undo step ------------------

  begin() {
    this.end();
    this.step = new Map();
    this.stepRect = null;
  }

  end() {
    const step = this.step;
    this.step = null;
    if (!step || step.size === 0) return;
    this.push(this.undoSteps, { tiles: step, rect: this.stepRect });
    this.redoSteps = [];
  }

  // Keep the old ids of every tile in the rectangle before it is written.
  keep([x0, y0, x1, y1]) {
    const own = !this.step;
    if (own) this.begin();
    for (let ty = Math.floor(y0 / TILE); ty * TILE < y1; ty += 1) {
      for (let tx = Math.floor(x0 / TILE); tx * TILE < x1; tx += 1) {
        const key = ty * this.tilesX + tx;
        if (!this.step.has(key)) this.step.set(key, this.readTile(key));
      }
    }
    this.stepRect = union(this.stepRect, [x0, y0, x1, y1]);
    return own;
  }

  changed(rect, own) {
    this.onChange(rect);
    if (own) this.end();
  }

  // A brush (value = a class) or eraser (UNLABELLED) stroke from a to b, image pixels,
  // `radius` image pixels wide on each side: every pixel whose centre lies within the radius of the segment.
  stroke(a, b, radius, value) {
    const r = Math.max(0.5, radius);
    const rect = this.clip([Math.floor(Math.min(a[0], b[0]) - r), Math.floor(Math.min(a[1], b[1]) - r),
      Math.ceil(Math.max(a[0], b[0]) + r) + 1, Math.ceil(Math.max(a[1], b[1]) + r) + 1]);
    if (!rect) return;
    const own = this.keep(rect);
    const [dx, dy] = [b[0] - a[0], b[1] - a[1]];
    const length2 = dx * dx + dy * dy;
    const r2 = r * r;
    for (let y = rect[1]; y < rect[3]; y += 1) {
      const py = y + 0.5 - a[1];
      for (let x = rect[0]; x < rect[2]; x += 1) {
        const px = x + 0.5 - a[0];
        const t = length2 ? Math.max(0, Math.min(1, (px * dx + py * dy) / length2)) : 0;
        const [ex, ey] = [px - t * dx, py - t * dy];
        if (ex * ex + ey * ey <= r2) this.ids[y * this.width + x] = value;
      }
    }
    this.changed(rect, own);
  }

  // Give `value` to the connected region (4-neighbours) of the map shown at (x, y): the
  // labels where there are labels, elsewhere the model's class ids (`model`, or nothing).
  // A labelled and an unlabelled pixel never belong to one region, so labels of one
  // material and a model of another never mix. Returns the number of pixels filled.
  fill(x, y, value, model = null) {
    const { width, height, ids } = this;
    x = Math.floor(x);
    y = Math.floor(y);
    if (x < 0 || y < 0 || x >= width || y >= height) return 0;
    const region = (i) => (ids[i] !== UNLABELLED ? 256 + ids[i] : model ? model[i] : UNLABELLED);
    const target = region(y * width + x);
    const inside = new Uint8Array(width * height);
    const stack = new Int32Array(width * height); // each pixel is pushed once at most
    let top = 0;
    let [x0, y0, x1, y1] = [x, y, x + 1, y + 1];
    let count = 0;
    const visit = (n) => {
      if (!inside[n] && region(n) === target) {
        inside[n] = 1;
        stack[top++] = n;
      }
    };
    visit(y * width + x);
    while (top) {
      const i = stack[--top];
      const px = i % width;
      const py = (i - px) / width;
      count += 1;
      if (px < x0) x0 = px;
      if (px >= x1) x1 = px + 1;
      if (py < y0) y0 = py;
      if (py >= y1) y1 = py + 1;
      if (px > 0) visit(i - 1);
      if (px < width - 1) visit(i + 1);
      if (py > 0) visit(i - width);
      if (py < height - 1) visit(i + width);
    }
    const own = this.keep([x0, y0, x1, y1]);
    for (let py = y0; py < y1; py += 1) {
      for (let i = py * width + x0, end = py * width + x1; i < end; i += 1) if (inside[i]) ids[i] = value;
    }
    this.changed([x0, y0, x1, y1], own);
    return count;
  }

  // Give `value` to the inside of a closed polygon (image pixels; a pixel whose centre is inside).
  polygon(points, value) {
    if (points.length < 3) return;
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const rect = this.clip([Math.floor(Math.min(...xs)), Math.floor(Math.min(...ys)),
      Math.ceil(Math.max(...xs)) + 1, Math.ceil(Math.max(...ys)) + 1]);
    if (!rect) return;
    const own = this.keep(rect);
    // Even-odd scanlines through the pixel centres.
    for (let y = rect[1]; y < rect[3]; y += 1) {
      const cy = y + 0.5;
      const crossings = [];
      for (let k = 0; k < points.length; k += 1) {
        const [ax, ay] = points[k];
        const [bx, by] = points[(k + 1) % points.length];
        if ((ay <= cy) !== (by <= cy)) crossings.push(ax + ((cy - ay) / (by - ay)) * (bx - ax));
      }
      crossings.sort((p, q) => p - q);
      for (let k = 0; k + 1 < crossings.length; k += 2) {
        const from = Math.max(rect[0], Math.ceil(crossings[k] - 0.5));
        const to = Math.min(rect[2], Math.ceil(crossings[k + 1] - 0.5));
        if (to > from) this.ids.fill(value, y * this.width + from, y * this.width + to);
      }
    }
    this.changed(rect, own);
  }

  // Replace every id at once: `make(i)` gives pixel i's new id (the model's map taken over, everything cleared).
  replaceAll(make) {
    const rect = [0, 0, this.width, this.height];
    const own = this.keep(rect);
    for (let i = 0; i < this.ids.length; i += 1) this.ids[i] = make(i);
    this.changed(rect, own);
  }

  undo() {
    return this.travel(this.undoSteps, this.redoSteps);
  }

  redo() {
    return this.travel(this.redoSteps, this.undoSteps);
  }

  // Pixels per class id (index 255: not labelled).
  counts() {
    const counts = new Float64Array(256);
    for (let i = 0; i < this.ids.length; i += 1) counts[this.ids[i]] += 1;
    return counts;
  }

  // -- internals ------------------------------------------------------------------------

  clip([x0, y0, x1, y1]) {
    const rect = [Math.max(0, x0), Math.max(0, y0), Math.min(this.width, x1), Math.min(this.height, y1)];
    return rect[2] > rect[0] && rect[3] > rect[1] ? rect : null;
  }

  tileRect(key) {
    const [tx, ty] = [key % this.tilesX, Math.floor(key / this.tilesX)];
    return [tx * TILE, ty * TILE, Math.min(this.width, (tx + 1) * TILE), Math.min(this.height, (ty + 1) * TILE)];
  }

  readTile(key) {
    const [x0, y0, x1, y1] = this.tileRect(key);
    const out = new Uint8Array((x1 - x0) * (y1 - y0));
    for (let y = y0; y < y1; y += 1) out.set(this.ids.subarray(y * this.width + x0, y * this.width + x1), (y - y0) * (x1 - x0));
    return out;
  }

  writeTile(key, tile) {
    const [x0, y0, x1, y1] = this.tileRect(key);
    for (let y = y0; y < y1; y += 1) this.ids.set(tile.subarray((y - y0) * (x1 - x0), (y - y0 + 1) * (x1 - x0)), y * this.width + x0);
  }

  // Undo or redo: swap the step's tiles with the current ones; the same step, holding
  // what they were, goes onto the other stack (so undo then redo is the saved state again).
  travel(from, to) {
    this.end();
    const step = from.pop();
    if (!step) return null;
    this.historyBytes -= bytesOf(step);
    for (const [key, tile] of step.tiles) {
      const now = this.readTile(key);
      this.writeTile(key, tile);
      step.tiles.set(key, now);
    }
    this.push(to, step);
    this.onChange(step.rect);
    return step.rect;
  }

  push(stack, step) {
    stack.push(step);
    this.historyBytes += bytesOf(step);
    while (this.historyBytes > HISTORY_BYTES && (this.undoSteps.length + this.redoSteps.length) > 1) {
      const oldest = this.undoSteps.length ? this.undoSteps.shift() : this.redoSteps.shift();
      this.historyBytes -= bytesOf(oldest);
    }
  }
}

function bytesOf(step) {
  let n = 0;
  for (const tile of step.tiles.values()) n += tile.length;
  return n;
}
