// The canvas mask editor: brush, eraser, flood fill, polygon fill, clicks refined by the server, clear, undo/redo,
// zoom and pan, and saving the mask as a PNG to the API. Everything it needs comes from data- attributes of its root
// element:
//   data-width, data-height      the image's size in pixels (the mask has the same size)
//   data-mask-src                the PNG of the mask version to start from (optional: empty mask)
//   data-mask-version            that version's number, sent as parent_version so a stale save answers 409
//   data-save-url, data-csrf-token, data-editable ("true" for reviewers; otherwise only zoom and pan)
//   data-refine-url              where the clicks tool sends the mask and its clicks (POST /api/images/{id}/refine/)
// The mask is `bits` (one byte per pixel, 0 or 1), the truth that is saved. Brush and eraser strokes are drawn into
// it in JavaScript, not on a canvas read back, and each edit costs the size of the edit, not of the image. The visible
// canvas has the size of the viewport, not of the image: Chromium hands a changed canvas whole to the compositor every
// frame, which for a 4096×4096 canvas alone takes most of a frame without a GPU. Each of its pixels shows the mask
// pixel under its centre (what a canvas of the image's size shows with `image-rendering: pixelated`), redrawn only
// where an edit changed something, once per frame, and in full on zoom and pan.
//
// The clicks tool: a click (or a stroke, sampled every CLICK_SPACING pixels) says "lesion here", a right click or
// Shift+click "not lesion"; the server redraws the mask around every click of the session and the answer becomes one
// ordinary undo entry that also holds the session's clicks. The session is the clicks of the top undo entry when it
// is a refinement not yet saved: any other edit or a save ends it, undo drops its last click, redo brings it back.

const HISTORY_LIMIT = 100;
const HISTORY_BYTES = 256 * 1024 ** 2; // undo entries hold rectangles: on huge images, clears and fills add up
const UNREACHABLE = {}; // the saved state after the undo history no longer reaches back to it
const MIN_SIZE = 1;
const MAX_SIZE = 400;
const MAX_ZOOM = 32;
const MAX_CLICKS = 100; // ml/interactive.py's MAX_CLICKS: the server refuses more in one request
const CLICK_SPACING = 8; // image pixels between the clicks a stroke of the clicks tool is sampled into
const STROKE_CLICKS = 30; // at most this many from one stroke: a long one is sampled more sparsely

// The u for which coef·u + offset lies in [min, max], as [from, to]: empty when from > to.
function solve(coef, offset, min, max) {
  if (coef === 0) return offset >= min && offset <= max ? [-Infinity, Infinity] : [Infinity, -Infinity];
  const p = (min - offset) / coef, q = (max - offset) / coef;
  return coef > 0 ? [p, q] : [q, p];
}

// Whether two byte arrays of the same length hold the same bytes (a plain loop: `every` is ~30× slower).
function same(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class MaskEditor {
  constructor(root) {
    this.root = root;
    this.width = Number(root.dataset.width);
    this.height = Number(root.dataset.height);
    this.version = root.dataset.maskVersion ? Number(root.dataset.maskVersion) : null;
    this.saveUrl = root.dataset.saveUrl;
    this.refineUrl = root.dataset.refineUrl;
    this.csrfToken = root.dataset.csrfToken;
    this.editable = root.dataset.editable === "true";
    this.color = (root.dataset.color || "255,59,48").split(",").map(Number);

    this.viewport = root.querySelector("[data-viewport]");
    this.stage = root.querySelector("[data-stage]");
    this.canvas = root.querySelector("[data-mask-canvas]");
    this.guides = root.querySelector("[data-guides]");
    this.cursor = this.guides.querySelector("[data-cursor]");
    this.polygonLine = this.guides.querySelector("[data-polygon]");
    this.clickMarkers = this.guides.querySelector("[data-clicks]");
    this.ctx = this.canvas.getContext("2d");
    this.view = null; // the canvas's pixels and which image column and row each shows, set by layoutCanvas
    this.damage = null; // the image rectangle [x1, y1, x2, y2] to show anew at the next frame
    this.frameRequest = 0;
    const [r, g, b] = this.color;
    this.colorWord = new Uint32Array(new Uint8ClampedArray([r, g, b, 255]).buffer)[0]; // one canvas pixel

    this.bits = new Uint8Array(this.width * this.height);
    this.strokeMarks = null; // the pixels the stroke in progress covers, 1; the image's size, made at the first stroke
    this.strokeRows = null; // per image row, the columns [from, to) where it has marks; none: [width, 0]
    this.undoStack = [];
    this.redoStack = [];
    this.savedEntry = null; // the undo entry on top when the mask was last loaded or saved
    this.historyBytes = 0;
    this.loaded = false; // no edit and no save until the mask version the page names is on the canvas
    this.tool = "brush";
    this.size = Math.max(4, Math.round(Math.min(this.width, this.height) / 40));
    this.zoom = { scale: 1, x: 0, y: 0 };
    this.stroke = null;
    this.polygon = [];
    this.panning = null;
    this.dragBox = null; // the viewport's box during a drag
    this.spaceHeld = false;
    this.saving = null;
    this.clickStroke = null; // the clicks tool's stroke in progress: its sampled points
    this.clickMarkersKey = ""; // what the click markers show, so that zoom and pan only resize them
    this.pendingClicks = []; // clicks waiting for a refinement, sent one request at a time
    this.refining = null; // the refinement in flight (a promise), or null

    this.ready = this.load(root.dataset.maskSrc);
    this.bindPointer();
    this.bindKeys();
    new ResizeObserver(() => this.fit()).observe(this.viewport);
    this.fit();
  }

  // ---- state other code reads ----
  get dirty() {
    return this.top() !== this.savedEntry;
  }

  top() {
    return this.undoStack[this.undoStack.length - 1] || null;
  }

  // The clicks of the refinement session: those of the top undo entry when it is a refinement not yet saved.
  clickSession() {
    const top = this.top();
    return top && top.clicks && top !== this.savedEntry ? top.clicks : [];
  }

  foregroundPixels() {
    let count = 0;
    for (let i = 0; i < this.bits.length; i++) count += this.bits[i];
    return count;
  }

  get editing() {
    return this.editable && this.loaded;
  }

  async load(src) {
    try {
      if (src) await this.decode(src);
      this.loaded = true;
    } catch (error) {
      this.editable = false;
      this.status(`The mask could not be loaded (${error.message}): editing is off, reload the page.`, "error");
    }
    this.changed();
  }

  async decode(src) {
    const picture = new Image();
    picture.src = src;
    await picture.decode();
    this.bits.set(this.pictureBits(picture));
    this.paint(0, 0, this.width, this.height);
  }

  // A mask picture (a PNG of 0 and 255, the image's size) as one byte per pixel, 0 or 1.
  pictureBits(picture) {
    const scratch = document.createElement("canvas");
    scratch.width = this.width;
    scratch.height = this.height;
    const scratchCtx = scratch.getContext("2d", { willReadFrequently: true });
    scratchCtx.drawImage(picture, 0, 0);
    const data = scratchCtx.getImageData(0, 0, this.width, this.height).data;
    const bits = new Uint8Array(this.width * this.height);
    for (let i = 0; i < bits.length; i++) bits[i] = data[i * 4] > 0 ? 1 : 0;
    return bits;
  }

  // ---- showing the bits on the visible canvas ----
  // Shows the image rectangle anew at the next frame: all the edits of one frame cost one redraw of their union.
  paint(x, y, w, h) {
    const d = this.damage;
    if (d) {
      d[0] = Math.min(d[0], x); d[1] = Math.min(d[1], y); d[2] = Math.max(d[2], x + w); d[3] = Math.max(d[3], y + h);
    } else {
      this.damage = [x, y, x + w, y + h];
    }
    this.frameRequest ||= requestAnimationFrame(() => {
      const [x1, y1, x2, y2] = this.damage;
      this.damage = null;
      this.frameRequest = 0;
      this.draw(x1, y1, x2, y2);
    });
  }

  // The canvas covers the viewport with one canvas pixel per device pixel: in the zoomed stage, its own transform
  // undoes the stage's (a transform, as layout would round a position to whole stage pixels, which zoom magnifies).
  // Redrawn in full, as what it shows has moved.
  layoutCanvas() {
    const box = this.dragBox || this.viewport.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    const width = Math.ceil(box.width * dpr), height = Math.ceil(box.height * dpr);
    if (!width || !height) return;
    if (!this.view || this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.canvas.style.width = `${width / dpr}px`;
      this.canvas.style.height = `${height / dpr}px`;
      this.canvas.style.transformOrigin = "0 0";
      const pixels = this.ctx.createImageData(width, height);
      this.view = {
        pixels, words: new Uint32Array(pixels.data.buffer), cols: new Int32Array(width), rows: new Int32Array(height),
      };
    }
    const { scale, x, y } = this.zoom;
    this.canvas.style.transform = `scale(${1 / scale}) translate(${-x}px, ${-y}px)`;
    // The image column (row) under each canvas pixel's centre, -1 outside the image.
    const place = (map, offset, size) => {
      for (let i = 0; i < map.length; i++) {
        const v = Math.floor(((i + 0.5) / dpr - offset) / scale);
        map[i] = v >= 0 && v < size ? v : -1;
      }
    };
    const { cols, rows } = this.view;
    place(cols, x, this.width);
    place(rows, y, this.height);
    this.view.dpr = dpr;
    // The columns that show the image: [first, last), -1 on either side.
    this.view.first = cols.findIndex((col) => col >= 0);
    this.view.last = this.view.first < 0 ? 0 : cols.findLastIndex((col) => col >= 0) + 1;
    this.drawPixels(0, 0, width, height);
  }

  // Redraws now the canvas pixels that show the image rectangle [x1, x2) × [y1, y2).
  draw(x1, y1, x2, y2) {
    if (!this.view) return;
    const { scale, x, y } = this.zoom, dpr = this.view.dpr;
    // A pixel more on each side: rounding never leaves one out.
    const c1 = Math.max(0, Math.floor((x1 * scale + x) * dpr) - 1);
    const c2 = Math.min(this.canvas.width, Math.ceil((x2 * scale + x) * dpr) + 1);
    const r1 = Math.max(0, Math.floor((y1 * scale + y) * dpr) - 1);
    const r2 = Math.min(this.canvas.height, Math.ceil((y2 * scale + y) * dpr) + 1);
    if (c1 < c2 && r1 < r2) this.drawPixels(c1, r1, c2, r2);
  }

  // Redraws now the canvas pixels [c1, c2) × [r1, r2) from the bits, with the stroke in progress over them.
  // Zoom and pan redraw the whole viewport, so this loop is kept tight: a pixel costs a lookup or two.
  drawPixels(c1, r1, c2, r2) {
    const { words, cols, rows, first, last } = this.view, columns = this.canvas.width;
    const { bits, colorWord, width } = this;
    const marks = this.stroke ? this.strokeMarks : null, marked = this.stroke && !this.stroke.erase;
    const from = Math.max(c1, first), to = Math.min(c2, last);
    for (let r = r1; r < r2; r++) {
      const out = r * columns;
      if (rows[r] < 0 || from >= to) {
        words.fill(0, out + c1, out + c2);
      } else if (r > r1 && rows[r] === rows[r - 1]) { // zoomed in: the same image row as the canvas row above
        words.copyWithin(out + c1, out - columns + c1, out - columns + c2);
      } else {
        words.fill(0, out + c1, out + from);
        words.fill(0, out + to, out + c2);
        const row = rows[r] * width;
        if (marks) {
          for (let c = from; c < to; c++) {
            const i = row + cols[c];
            words[out + c] = (marks[i] ? marked : bits[i]) ? colorWord : 0;
          }
        } else {
          for (let c = from; c < to; c++) words[out + c] = bits[row + cols[c]] ? colorWord : 0;
        }
      }
    }
    this.ctx.putImageData(this.view.pixels, 0, 0, c1, r1, c2 - c1, r2 - r1);
  }

  // ---- edits: each one becomes an undo entry holding the rectangle before and after ----
  region(x1, y1, x2, y2) {
    const x = Math.max(0, Math.floor(x1)), y = Math.max(0, Math.floor(y1));
    const w = Math.min(this.width, Math.ceil(x2)) - x, h = Math.min(this.height, Math.ceil(y2)) - y;
    return w > 0 && h > 0 ? { x, y, w, h } : null;
  }

  snapshot({ x, y, w, h }) {
    const copy = new Uint8Array(w * h);
    for (let row = 0; row < h; row++) {
      const start = (y + row) * this.width + x;
      copy.set(this.bits.subarray(start, start + w), row * w);
    }
    return copy;
  }

  restore({ x, y, w, h }, copy) {
    for (let row = 0; row < h; row++) this.bits.set(copy.subarray(row * w, (row + 1) * w), (y + row) * this.width + x);
    this.paint(x, y, w, h);
  }

  // `clicks`: a refinement's session clicks, kept even when no pixel changed, so that the click still counts.
  record(area, before, clicks = null) {
    const after = this.snapshot(area);
    if (!clicks && same(after, before)) return;
    this.historyBytes -= this.redoStack.reduce((sum, entry) => sum + entry.before.length * 2, 0);
    this.redoStack = [];
    this.undoStack.push({ area, before, after, clicks });
    this.historyBytes += before.length * 2;
    while (this.undoStack.length > 1 && (this.undoStack.length > HISTORY_LIMIT || this.historyBytes > HISTORY_BYTES)) {
      const dropped = this.undoStack.shift();
      this.historyBytes -= dropped.before.length * 2;
      // Undo can no longer go back to the saved mask: the drawing stays unsaved until the next save.
      if (this.savedEntry === null || this.savedEntry === dropped) this.savedEntry = UNREACHABLE;
    }
    this.changed();
  }

  undo() {
    this.historyStep(this.undoStack, this.redoStack, "before");
  }

  redo() {
    this.historyStep(this.redoStack, this.undoStack, "after");
  }

  // Moves the latest edit of one history stack onto the other, putting its pixels back as they were `side` it.
  historyStep(from, to, side) {
    if (!this.editing) return;
    const entry = from.pop();
    if (!entry) return;
    this.restore(entry.area, entry[side]);
    to.push(entry);
    this.changed();
  }

  clear() {
    if (!this.editing) return;
    const area = { x: 0, y: 0, w: this.width, h: this.height };
    const before = this.snapshot(area);
    this.bits.fill(0);
    this.paint(0, 0, this.width, this.height);
    this.record(area, before);
  }

  // Flood fill from a pixel: a background region (e.g. inside an outline) becomes mask; clicking a painted region
  // removes that whole connected blob. 4-connected scanline fill.
  fill(px, py) {
    const x0 = Math.floor(px), y0 = Math.floor(py);
    if (x0 < 0 || y0 < 0 || x0 >= this.width || y0 >= this.height) return;
    const { width, height, bits } = this;
    const target = bits[y0 * width + x0];
    const inside = new Uint8Array(width * height);
    let minX = x0, maxX = x0, minY = y0, maxY = y0;
    const stack = [x0, y0];
    while (stack.length) {
      const y = stack.pop(), x = stack.pop();
      let left = x;
      const rowStart = y * width;
      if (inside[rowStart + x] || bits[rowStart + x] !== target) continue;
      while (left > 0 && bits[rowStart + left - 1] === target && !inside[rowStart + left - 1]) left--;
      let right = x;
      while (right < width - 1 && bits[rowStart + right + 1] === target && !inside[rowStart + right + 1]) right++;
      for (let i = left; i <= right; i++) inside[rowStart + i] = 1;
      minX = Math.min(minX, left); maxX = Math.max(maxX, right);
      minY = Math.min(minY, y); maxY = Math.max(maxY, y);
      for (const ny of [y - 1, y + 1]) {
        if (ny < 0 || ny >= height) continue;
        const next = ny * width;
        for (let i = left; i <= right; i++) {
          if (!inside[next + i] && bits[next + i] === target && (i === left || inside[next + i - 1] || bits[next + i - 1] !== target)) {
            stack.push(i, ny);
          }
        }
      }
    }
    const area = { x: minX, y: minY, w: maxX - minX + 1, h: maxY - minY + 1 };
    const before = this.snapshot(area);
    const value = target ? 0 : 1;
    for (let row = area.y; row < area.y + area.h; row++) {
      for (let col = area.x; col < area.x + area.w; col++) if (inside[row * width + col]) bits[row * width + col] = value;
    }
    this.paint(area.x, area.y, area.w, area.h);
    this.record(area, before);
  }

  // ---- brush and eraser strokes: marked while the pointer moves (and shown over the bits), then committed ----
  strokeStart(point) {
    if (!this.strokeMarks) {
      this.strokeMarks = new Uint8Array(this.width * this.height);
      this.strokeRows = new Int32Array(2 * this.height);
      for (let y = 0; y < this.height; y++) this.strokeRows[2 * y] = this.width;
    }
    const r = this.size / 2; // the size when the stroke began holds for all of it
    const box = [point.x - r, point.y - r, point.x + r, point.y + r];
    this.stroke = { last: point, r, erase: this.tool === "eraser", box };
    this.strokeSegment(point, point);
  }

  strokeTo(point) {
    const stroke = this.stroke, r = stroke.r, box = stroke.box;
    this.strokeSegment(stroke.last, point);
    box[0] = Math.min(box[0], point.x - r); box[1] = Math.min(box[1], point.y - r);
    box[2] = Math.max(box[2], point.x + r); box[3] = Math.max(box[3], point.y + r);
    stroke.last = point;
  }

  // Marks the pixels whose centre the brush's path from a to b covers (round ends, the brush's diameter wide): those
  // a line drawn on a canvas covers at least half, so the mask looks exactly as drawn. The path is convex, so it
  // crosses a row of pixel centres in one run: from the leftmost to the rightmost of where the discs at its ends and
  // the band between them cross it.
  strokeSegment(a, b) {
    const r = this.stroke.r;
    const area = this.region(Math.min(a.x, b.x) - r, Math.min(a.y, b.y) - r,
      Math.max(a.x, b.x) + r, Math.max(a.y, b.y) + r);
    if (!area) return;
    const { strokeMarks: marks, strokeRows: rows, width } = this;
    const dx = b.x - a.x, dy = b.y - a.y, length2 = dx * dx + dy * dy, length = Math.sqrt(length2);
    for (let y = area.y; y < area.y + area.h; y++) {
      const v = y + 0.5 - a.y, w = y + 0.5 - b.y; // the row's centres, from a and from b
      let left = Infinity, right = -Infinity;
      if (v * v <= r * r) {
        const half = Math.sqrt(r * r - v * v);
        left = a.x - half; right = a.x + half;
      }
      if (w * w <= r * r) {
        const half = Math.sqrt(r * r - w * w);
        left = Math.min(left, b.x - half); right = Math.max(right, b.x + half);
      }
      if (length) { // the band, for u = x - a.x: 0 <= u·dx + v·dy <= |d|² along it, |u·dy - v·dx| <= r·|d| across
        const [from1, to1] = solve(dx, v * dy, 0, length2), [from2, to2] = solve(dy, -v * dx, -r * length, r * length);
        const from = Math.max(from1, from2), to = Math.min(to1, to2);
        if (from <= to) { left = Math.min(left, a.x + from); right = Math.max(right, a.x + to); }
      }
      const x1 = Math.max(area.x, Math.ceil(left - 0.5)), x2 = Math.min(area.x + area.w, Math.floor(right - 0.5) + 1);
      if (x1 < x2) {
        marks.fill(1, y * width + x1, y * width + x2);
        rows[2 * y] = Math.min(rows[2 * y], x1);
        rows[2 * y + 1] = Math.max(rows[2 * y + 1], x2);
      }
    }
    this.paint(area.x, area.y, area.w, area.h);
  }

  strokeEnd() {
    const { box, erase } = this.stroke;
    this.stroke = null;
    const area = this.region(...box);
    if (!area) return;
    const { bits, strokeMarks: marks, strokeRows: rows, width } = this, value = erase ? 0 : 1;
    const before = this.snapshot(area);
    for (let y = area.y; y < area.y + area.h; y++) {
      for (let i = y * width + rows[2 * y], end = y * width + rows[2 * y + 1]; i < end; i++) {
        if (marks[i]) { marks[i] = 0; bits[i] = value; }
      }
      rows[2 * y] = width;
      rows[2 * y + 1] = 0;
    }
    this.record(area, before); // nothing to redraw: the marks were shown as `value`
  }

  // ---- polygon fill: click the corners, close with a click on the first corner, a double click or Enter ----
  polygonAdd(point) {
    const first = this.polygon[0];
    const closeEnough = 8 / this.zoom.scale;
    if (first && this.polygon.length > 2 && Math.hypot(point.x - first.x, point.y - first.y) < closeEnough) {
      this.polygonClose();
      return;
    }
    this.polygon.push(point);
    this.drawGuides();
  }

  polygonClose() {
    const points = this.polygon;
    this.polygon = [];
    this.drawGuides();
    if (points.length < 3) return;
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    const area = this.region(Math.min(...xs) - 2, Math.min(...ys) - 2, Math.max(...xs) + 2, Math.max(...ys) + 2);
    if (!area) return;
    // Drawn on a canvas of its own: pixels it covers at least half join the mask, so it looks exactly as drawn.
    const scratch = document.createElement("canvas");
    scratch.width = area.w;
    scratch.height = area.h;
    const ctx = scratch.getContext("2d", { willReadFrequently: true });
    ctx.translate(-area.x, -area.y);
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
    ctx.closePath();
    ctx.fill();
    const alpha = ctx.getImageData(0, 0, area.w, area.h).data;
    const before = this.snapshot(area);
    for (let row = 0; row < area.h; row++) {
      const start = (area.y + row) * this.width + area.x;
      for (let col = 0; col < area.w; col++) {
        if (alpha[(row * area.w + col) * 4 + 3] >= 128) this.bits[start + col] = 1;
      }
    }
    this.paint(area.x, area.y, area.w, area.h);
    this.record(area, before);
  }

  // ---- clicks: a click or a stroke's sampled points, sent with the session's to the server, one request at a time ----
  clickStart(point, positive) {
    this.clickStroke = [{ ...point, positive }];
    this.drawClicks();
  }

  clickTo(point) {
    const last = this.clickStroke[this.clickStroke.length - 1];
    if (Math.hypot(point.x - last.x, point.y - last.y) < CLICK_SPACING) return;
    this.clickStroke.push({ ...point, positive: last.positive });
    this.drawClicks();
  }

  clickEnd() {
    const inside = this.clickStroke.filter((c) => c.x >= 0 && c.y >= 0 && c.x < this.width && c.y < this.height);
    this.clickStroke = null;
    const count = Math.min(inside.length, STROKE_CLICKS); // evenly along the stroke, its ends included
    const clicks = Array.from({ length: count }, (_, k) => inside[count > 1 ? Math.round(k * (inside.length - 1) / (count - 1)) : 0]);
    if (!clicks.length) {
      this.drawClicks();
      return;
    }
    this.pendingClicks.push(...clicks);
    if (!this.refining) this.refining = this.refineQueued().finally(() => { this.refining = null; this.changed(); });
    this.changed();
  }

  // Clicks made while a request is in flight wait for it, then go together in the next one.
  async refineQueued() {
    while (this.pendingClicks.length) {
      const added = this.pendingClicks.slice();
      // Past MAX_CLICKS the oldest clicks are left out: the mask sent already shows what they said.
      const clicks = this.clickSession().concat(added).slice(-MAX_CLICKS);
      const base = this.top();
      let bits = await this.refineRequest(clicks);
      if (bits && this.top() !== base) {
        this.status("The mask changed while the clicks were on their way: they were not applied. Click again.", "error");
        bits = null;
      }
      if (!bits) {
        this.pendingClicks = []; // those queued behind were meant for the mask these clicks would have given
        return;
      }
      this.pendingClicks = this.pendingClicks.slice(added.length);
      this.refineApply(bits, clicks);
    }
  }

  // The refined mask as bits, or null with the reason on the status line.
  async refineRequest(clicks) {
    const failed = (reason) => {
      this.status(`Clicks not applied: ${reason}. The mask is as it was.`, "error");
      return null;
    };
    let response;
    try {
      const form = new FormData();
      form.append("mask", await this.toBlob(), "mask.png");
      form.append("clicks", JSON.stringify(clicks));
      response = await fetch(this.refineUrl, {
        method: "POST", body: form, credentials: "same-origin", headers: { "X-CSRFToken": this.csrfToken },
      });
      if (response.ok) return this.pictureBits(await createImageBitmap(await response.blob()));
    } catch (error) {
      return failed(response ? `the answer could not be read (${error.message})`
        : `the server could not be reached (${error.message})`);
    }
    const body = await response.json().catch(() => ({}));
    return failed([body.clicks, body.mask, body.detail].flat().filter(Boolean).join(" ") || `HTTP ${response.status}`);
  }

  // The server's mask as one undo entry over the rectangle of the pixels it changed (the last click's pixel when it
  // changed none: the entry still holds the session's clicks).
  refineApply(bits, clicks) {
    let minX = this.width, minY = this.height, maxX = -1, maxY = -1;
    for (let y = 0; y < this.height; y++) {
      const row = y * this.width;
      for (let x = 0; x < this.width; x++) {
        if (bits[row + x] === this.bits[row + x]) continue;
        if (x < minX) minX = x;
        if (x > maxX) maxX = x;
        if (y < minY) minY = y;
        maxY = y;
      }
    }
    const last = clicks[clicks.length - 1];
    const area = maxX < 0 ? { x: Math.floor(last.x), y: Math.floor(last.y), w: 1, h: 1 }
      : { x: minX, y: minY, w: maxX - minX + 1, h: maxY - minY + 1 };
    const before = this.snapshot(area);
    for (let row = area.y; row < area.y + area.h; row++) {
      const start = row * this.width + area.x;
      this.bits.set(bits.subarray(start, start + area.w), start);
    }
    this.paint(area.x, area.y, area.w, area.h);
    this.record(area, before, clicks);
  }

  // The session's clicks and those not applied yet (hollow) as markers: green "lesion here", red "not lesion".
  drawClicks() {
    const session = this.clickSession();
    const shown = session.concat(this.pendingClicks, this.clickStroke || []);
    const key = `${session.length}|${shown.map((c) => `${c.x},${c.y},${c.positive}`).join(" ")}`;
    if (key !== this.clickMarkersKey) {
      this.clickMarkersKey = key;
      this.clickMarkers.replaceChildren(...shown.map((click, i) => {
        const marker = document.createElementNS("http://www.w3.org/2000/svg", "circle");
        marker.setAttribute("cx", click.x);
        marker.setAttribute("cy", click.y);
        marker.setAttribute("class", `${click.positive ? "positive" : "negative"}${i >= session.length ? " pending" : ""}`);
        return marker;
      }));
    }
    for (const marker of this.clickMarkers.children) {
      marker.setAttribute("r", 4 / this.zoom.scale);
      marker.setAttribute("stroke-width", 1.5 / this.zoom.scale);
    }
  }

  drawGuides(point) {
    const points = this.polygon.map((p) => `${p.x},${p.y}`);
    if (point && this.polygon.length) points.push(`${point.x},${point.y}`);
    this.polygonLine.setAttribute("points", points.join(" "));
    this.polygonLine.setAttribute("stroke-width", 1.5 / this.zoom.scale);
    if (point) {
      this.cursor.setAttribute("cx", point.x);
      this.cursor.setAttribute("cy", point.y);
    }
    this.cursor.setAttribute("r", this.size / 2);
    this.cursor.setAttribute("stroke-width", 1.5 / this.zoom.scale);
    this.cursor.style.display = this.editable && (this.tool === "brush" || this.tool === "eraser") ? "" : "none";
  }

  // ---- tools, size, zoom ----
  setTool(tool) {
    if (!this.editable) return;
    if (tool !== "polygon") this.polygon = [];
    this.tool = tool;
    this.root.dataset.tool = tool;
    this.drawGuides();
    this.changed();
  }

  setSize(size) {
    this.size = Math.round(Math.min(MAX_SIZE, Math.max(MIN_SIZE, size)));
    this.drawGuides();
    this.changed();
  }

  fit() {
    const box = this.viewport.getBoundingClientRect();
    if (!box.width || !box.height) return;
    const scale = Math.min(box.width / this.width, box.height / this.height);
    this.zoom = { scale, x: (box.width - this.width * scale) / 2, y: (box.height - this.height * scale) / 2 };
    this.applyZoom();
  }

  zoomAt(factor, clientX, clientY) {
    const box = this.viewport.getBoundingClientRect();
    const cx = clientX === undefined ? box.width / 2 : clientX - box.left;
    const cy = clientY === undefined ? box.height / 2 : clientY - box.top;
    const fitScale = Math.min(box.width / this.width, box.height / this.height);
    const scale = Math.min(MAX_ZOOM, Math.max(fitScale / 4, this.zoom.scale * factor));
    const k = scale / this.zoom.scale;
    this.zoom = { scale, x: cx - (cx - this.zoom.x) * k, y: cy - (cy - this.zoom.y) * k };
    this.applyZoom();
  }

  applyZoom() {
    const { scale, x, y } = this.zoom;
    this.stage.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    this.stage.classList.toggle("magnified", scale > 4);
    this.layoutCanvas();
    this.drawGuides();
    this.changed();
  }

  // `box`: the viewport's, when the caller has it.
  imagePoint(event, box = this.viewport.getBoundingClientRect()) {
    return {
      x: (event.clientX - box.left - this.zoom.x) / this.zoom.scale,
      y: (event.clientY - box.top - this.zoom.y) / this.zoom.scale,
    };
  }

  // ---- input ----
  bindPointer() {
    const viewport = this.viewport;
    viewport.addEventListener("pointerdown", (event) => {
      const pan = event.button === 1 || (event.button === 0 && (this.spaceHeld || this.tool === "pan" || !this.editing));
      // The viewport stays put during a drag (the pointer is captured): its box, read once, spares the forced
      // layout that reading it after each move's changes to the guides would cost.
      const box = viewport.getBoundingClientRect();
      if (pan) {
        this.panning = { x: event.clientX - this.zoom.x, y: event.clientY - this.zoom.y };
        this.dragBox = box;
        viewport.setPointerCapture(event.pointerId);
        viewport.classList.add("panning");
        event.preventDefault();
        return;
      }
      const clicking = this.editing && this.tool === "clicks" && (event.button === 0 || event.button === 2);
      if (event.button !== 0 && !clicking) return;
      const point = this.imagePoint(event, box);
      if (clicking) {
        this.dragBox = box;
        viewport.setPointerCapture(event.pointerId);
        this.clickStart(point, event.button === 0 && !event.shiftKey); // right button or Shift: "not lesion"
      } else if (this.tool === "brush" || this.tool === "eraser") {
        this.dragBox = box;
        viewport.setPointerCapture(event.pointerId);
        this.strokeStart(point);
      } else if (this.tool === "fill") {
        this.fill(point.x, point.y);
      } else if (this.tool === "polygon") {
        this.polygonAdd(point);
      }
      event.preventDefault();
    });
    viewport.addEventListener("pointermove", (event) => {
      if (this.panning) {
        this.zoom = { ...this.zoom, x: event.clientX - this.panning.x, y: event.clientY - this.panning.y };
        this.applyZoom();
        return;
      }
      const box = this.dragBox || viewport.getBoundingClientRect();
      if (this.stroke) {
        const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
        for (const each of events.length ? events : [event]) this.strokeTo(this.imagePoint(each, box));
      }
      if (this.clickStroke) {
        const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
        for (const each of events.length ? events : [event]) this.clickTo(this.imagePoint(each, box));
      }
      this.drawGuides(this.imagePoint(event, box));
    });
    const end = () => {
      this.dragBox = null;
      if (this.stroke) this.strokeEnd();
      if (this.clickStroke) this.clickEnd();
      if (this.panning) {
        this.panning = null;
        viewport.classList.remove("panning");
      }
    };
    viewport.addEventListener("pointerup", end);
    viewport.addEventListener("pointercancel", end);
    viewport.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX, event.clientY);
    }, { passive: false });
    viewport.addEventListener("dblclick", () => {
      if (this.tool === "polygon") this.polygonClose();
    });
    viewport.addEventListener("contextmenu", (event) => event.preventDefault());
    viewport.addEventListener("pointerleave", () => { this.cursor.style.display = "none"; });
    viewport.addEventListener("pointerenter", () => this.drawGuides());

    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.addEventListener("click", () => this.setTool(button.dataset.tool));
    }
    const actions = {
      undo: () => this.undo(), redo: () => this.redo(), clear: () => this.clear(), save: () => this.save(),
      "zoom-in": () => this.zoomAt(1.25), "zoom-out": () => this.zoomAt(0.8), fit: () => this.fit(),
    };
    for (const button of this.root.querySelectorAll("[data-action]")) {
      button.addEventListener("click", () => actions[button.dataset.action]());
    }
    this.sizeInput = this.root.querySelector("[data-size]");
    this.sizeInput?.addEventListener("input", () => this.setSize(Number(this.sizeInput.value)));
  }

  bindKeys() {
    document.addEventListener("keydown", (event) => {
      if (event.target.closest("input, textarea, select")) return;
      const key = event.key.toLowerCase();
      const command = event.ctrlKey || event.metaKey;
      if (key === " ") {
        this.spaceHeld = true;
        event.preventDefault();
        return;
      }
      if (command) {
        if (key === "z" && event.shiftKey) this.redo();
        else if (key === "z" || key === "y") (key === "z" ? this.undo() : this.redo());
        else if (key === "s") this.save();
        else return;
        event.preventDefault();
        return;
      }
      if (event.altKey) return;
      const handled = {
        b: () => this.setTool("brush"), e: () => this.setTool("eraser"), f: () => this.setTool("fill"),
        p: () => this.setTool("polygon"), s: () => this.setTool("clicks"), v: () => this.setTool("pan"),
        "[": () => this.setSize(this.size / 1.2 - 0.5), "]": () => this.setSize(this.size * 1.2 + 0.5),
        "+": () => this.zoomAt(1.25), "=": () => this.zoomAt(1.25), "-": () => this.zoomAt(0.8), "0": () => this.fit(),
        enter: () => this.polygonClose(), escape: () => { this.polygon = []; this.drawGuides(); },
      }[key];
      if (!handled) return;
      handled();
      event.preventDefault();
    });
    document.addEventListener("keyup", (event) => {
      if (event.key === " ") this.spaceHeld = false;
    });
  }

  // ---- saving: a PNG (alpha = mask) posted with the version it was drawn on ----
  toBlob() {
    const out = document.createElement("canvas");
    out.width = this.width;
    out.height = this.height;
    const outCtx = out.getContext("2d");
    const pixels = outCtx.createImageData(this.width, this.height);
    const data = pixels.data;
    for (let i = 0; i < this.bits.length; i++) {
      if (this.bits[i]) { const o = i * 4; data[o] = data[o + 1] = data[o + 2] = data[o + 3] = 255; }
    }
    outCtx.putImageData(pixels, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  // Resolves to the saved version, or null. On a conflict (someone saved on top meanwhile) the drawing stays on
  // screen; `save(latestVersion)` then stores it as the newest version, keeping theirs in the history.
  save(parentVersion = this.version) {
    if (!this.editing) return Promise.resolve(null);
    if (!this.dirty && !this.saving && parentVersion === this.version) {
      this.status(this.version ? `No change since version ${this.version}` : "Nothing drawn yet", "ok");
      return Promise.resolve(this.version);
    }
    if (!this.saving) this.saving = this.upload(parentVersion).finally(() => { this.saving = null; this.changed(); });
    return this.saving;
  }

  async upload(parentVersion) {
    const entry = this.top();
    this.status("Saving…", "busy");
    const form = new FormData();
    form.append("file", await this.toBlob(), "mask.png");
    form.append("parent_version", parentVersion ?? 0); // 0: drawn on no mask at all
    let response;
    try {
      response = await fetch(this.saveUrl, {
        method: "POST", body: form, credentials: "same-origin", headers: { "X-CSRFToken": this.csrfToken },
      });
    } catch (error) {
      this.status(`Not saved: the server could not be reached (${error.message}). Your drawing is still here.`, "error");
      return null;
    }
    const body = await response.json().catch(() => ({}));
    if (response.status === 201) {
      this.version = body.version;
      this.savedEntry = entry;
      this.status(`Saved as version ${body.version}`, "ok");
      this.root.dispatchEvent(new CustomEvent("mask:saved", { detail: body }));
      return body.version;
    }
    if (response.status === 409) {
      this.status(body.detail || "Someone saved a newer version.", "error", body.latest_version);
      this.root.dispatchEvent(new CustomEvent("mask:conflict", { detail: body }));
      return null;
    }
    const reason = body.file || body.detail || `HTTP ${response.status}`;
    this.status(`Not saved: ${reason}. Your drawing is still here.`, "error");
    return null;
  }

  status(text, kind, conflictVersion) {
    this.root.dispatchEvent(new CustomEvent("mask:status", { detail: { text, kind, conflictVersion } }));
  }

  // Lets the page redraw its controls (active tool, size, undo/redo availability, unsaved marker, refining).
  changed() {
    this.drawClicks();
    this.root.dispatchEvent(new CustomEvent("mask:changed", {
      detail: {
        tool: this.tool, size: this.size, zoom: this.zoom.scale, dirty: this.dirty, saving: Boolean(this.saving),
        refining: Boolean(this.refining), canUndo: this.undoStack.length > 0, canRedo: this.redoStack.length > 0,
      },
    }));
  }
}
