// The review page: the mask editor, the model overlays (heatmaps, consensus outline), display window/level, and
// the page's keys: A approve, R reject, N next image, H hide overlays. The editor binds its own drawing keys.
import { MaskEditor } from "./mask-editor.js";

const root = document.querySelector("[data-review]");
const editorRoot = root.querySelector("[data-mask-editor]");
const stage = root.querySelector("[data-stage]");
const editor = new MaskEditor(editorRoot);
window.maskEditor = editor; // for the browser tests and benchmark

// ---- overlays: heatmaps in a perceptual ramp, the model's consensus mask as an outline ----
function heatColor(v) {
  const stops = [[0, 0, 80], [0, 160, 255], [255, 230, 0], [255, 30, 0]];
  const x = Math.min(v, 0.999) * (stops.length - 1);
  const i = Math.floor(x), t = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * t));
}

async function paintOverlay(canvas) {
  const picture = new Image();
  picture.src = canvas.dataset.src;
  await picture.decode();
  canvas.width = picture.naturalWidth;
  canvas.height = picture.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(picture, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  const w = canvas.width;
  const values = new Uint8Array(data.length / 4);
  for (let i = 0; i < values.length; i++) values[i] = data[i * 4];
  const color = (canvas.dataset.color || "255,204,0").split(",").map(Number);
  for (let i = 0; i < values.length; i++) {
    const o = i * 4;
    if (canvas.dataset.kind === "heatmap") {
      const v = values[i] / 255;
      const [r, g, b] = heatColor(v);
      data[o] = r; data[o + 1] = g; data[o + 2] = b; data[o + 3] = Math.round(255 * Math.min(1, v * 1.2));
    } else {
      const edge = values[i] > 0 && (!values[i - 1] || !values[i + 1] || !values[i - w] || !values[i + w]);
      data[o] = color[0]; data[o + 1] = color[1]; data[o + 2] = color[2]; data[o + 3] = edge ? 255 : 0;
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

for (const canvas of stage.querySelectorAll("canvas[data-src]")) paintOverlay(canvas);

for (const box of root.querySelectorAll("[data-toggle]")) {
  box.addEventListener("change", () => {
    stage.querySelector(`[data-layer="${box.dataset.toggle}"]`).hidden = !box.checked;
  });
}

const opacity = root.querySelector("[data-opacity]");
const setOpacity = () => stage.style.setProperty("--overlay-opacity", opacity.value / 100);
opacity.addEventListener("input", setOpacity);
setOpacity();

// ---- window / level for grayscale scans: an SVG filter on the picture only, so masks keep their colours ----
const picture = stage.querySelector("[data-picture]");
const level = root.querySelector("[data-level]");
const windowWidth = root.querySelector("[data-window]");
const transfer = root.querySelectorAll("#window-level feFuncR, #window-level feFuncG, #window-level feFuncB");

function applyWindow() {
  const width = Number(windowWidth.value) / 255;
  const low = Number(level.value) / 255 - width / 2;
  for (const channel of transfer) {
    channel.setAttribute("slope", 1 / width);
    channel.setAttribute("intercept", -low / width);
  }
  const identity = Number(windowWidth.value) === 255 && Number(level.value) === 128;
  picture.style.filter = identity ? "" : "url(#window-level)";
}

function autoWindow() {
  const sample = document.createElement("canvas");
  const scale = Math.min(1, 512 / Math.max(picture.naturalWidth, picture.naturalHeight));
  sample.width = Math.max(1, Math.round(picture.naturalWidth * scale));
  sample.height = Math.max(1, Math.round(picture.naturalHeight * scale));
  const ctx = sample.getContext("2d");
  ctx.drawImage(picture, 0, 0, sample.width, sample.height);
  const data = ctx.getImageData(0, 0, sample.width, sample.height).data;
  const histogram = new Uint32Array(256);
  for (let i = 0; i < data.length; i += 4) histogram[Math.round((data[i] + data[i + 1] + data[i + 2]) / 3)]++;
  const total = data.length / 4;
  const percentile = (q) => {
    let seen = 0;
    for (let v = 0; v < 256; v++) if ((seen += histogram[v]) >= q * total) return v;
    return 255;
  };
  const low = percentile(0.01), high = Math.max(low + 2, percentile(0.99));
  windowWidth.value = high - low;
  level.value = Math.round((low + high) / 2);
  applyWindow();
}

level.addEventListener("input", applyWindow);
windowWidth.addEventListener("input", applyWindow);
root.querySelector("[data-window-auto]").addEventListener("click", autoWindow);
root.querySelector("[data-window-reset]").addEventListener("click", () => {
  windowWidth.value = 255;
  level.value = 128;
  applyWindow();
});

// ---- editor state on the page: active tool, size, undo/redo, save status and conflicts ----
const saveStatus = root.querySelector("[data-save-status]");
const saveOnTop = root.querySelector("[data-save-on-top]");
const sizeInput = editorRoot.querySelector("[data-size]");
const sizeValue = editorRoot.querySelector("[data-size-value]");
let conflictVersion = null;

editorRoot.addEventListener("mask:changed", ({ detail }) => {
  for (const button of editorRoot.querySelectorAll("[data-tool]")) {
    button.classList.toggle("active", button.dataset.tool === detail.tool);
  }
  if (sizeInput) {
    sizeInput.value = detail.size;
    sizeValue.textContent = detail.size;
  }
  const undo = editorRoot.querySelector('[data-action="undo"]');
  if (undo) {
    undo.disabled = !detail.canUndo;
    editorRoot.querySelector('[data-action="redo"]').disabled = !detail.canRedo;
  }
  root.classList.toggle("unsaved", detail.dirty);
  root.classList.toggle("refining", detail.refining);
  if (detail.dirty && !detail.saving && conflictVersion === null) saveStatus.textContent = "Unsaved changes (Ctrl+S saves)";
});

editorRoot.addEventListener("mask:status", ({ detail }) => {
  saveStatus.textContent = detail.text;
  saveStatus.dataset.kind = detail.kind;
  conflictVersion = detail.conflictVersion ?? null;
  saveOnTop.hidden = conflictVersion === null;
});

saveOnTop.addEventListener("click", () => editor.save(conflictVersion));

// After a save the decision applies to the new version.
editorRoot.addEventListener("mask:saved", ({ detail }) => {
  const version = document.getElementById("approve-mask-version");
  if (version) version.value = detail.version;
  const count = document.querySelector("[data-version-count]");
  if (count) count.textContent = detail.version;  // versions are numbered 1, 2, … with none ever removed
  const approve = root.dataset.approveButton && document.getElementById(root.dataset.approveButton);
  if (approve) approve.textContent = `Approve mask v${detail.version}`;
  else window.location.reload(); // the first mask of an image: the page now has a decision to offer
});

// ---- decisions: approving saves unsaved drawing first; leaving any other way with unsaved drawing makes the
// browser ask first (beforeunload) ----
window.addEventListener("beforeunload", (event) => {
  if (editor.dirty) event.preventDefault();
});

const approveButton = root.dataset.approveButton && document.getElementById(root.dataset.approveButton);
const rejectButton = root.dataset.rejectButton && document.getElementById(root.dataset.rejectButton);
let decided = false; // a decision is on its way: a second A or click must not send another
approveButton?.form.addEventListener("submit", async (event) => {
  if (decided || editor.saving) {
    event.preventDefault();
    return;
  }
  if (event.submitter === approveButton && editor.dirty) {
    event.preventDefault();
    // Saved: approve that version. Not saved: the status line says why, and nothing is approved.
    if ((await editor.save()) !== null) approveButton.form.requestSubmit(approveButton);
    return;
  }
  decided = true;
});

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "h") stage.classList.toggle("overlays-hidden");
  else if (key === "a" && approveButton) approveButton.form.requestSubmit(approveButton);
  else if (key === "r" && rejectButton) rejectButton.form.requestSubmit(rejectButton);
  else if (key === "n") document.getElementById(root.dataset.nextForm).requestSubmit();
});
