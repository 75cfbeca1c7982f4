// The review page: colours the mask and heatmap overlays, toggles them, and binds the keyboard.
const root = document.querySelector("[data-review]");
const stage = root.querySelector(".stage");

// A perceptual ramp (dark blue -> cyan -> yellow -> red) with opacity rising with saliency.
function heatColor(v) {
  const stops = [[0, 0, 80], [0, 160, 255], [255, 230, 0], [255, 30, 0]];
  const x = Math.min(v, 0.999) * (stops.length - 1);
  const i = Math.floor(x), t = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * t));
}

async function paint(canvas) {
  const picture = new Image();
  picture.src = canvas.dataset.src;
  await picture.decode();
  canvas.width = picture.naturalWidth;
  canvas.height = picture.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(picture, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  const color = (canvas.dataset.color || "255,0,0").split(",").map(Number);
  const outline = canvas.dataset.kind === "outline";
  const w = canvas.width;
  const on = (i) => data[i * 4] > 0;
  const values = new Uint8Array(data.length / 4);
  for (let i = 0; i < values.length; i++) values[i] = data[i * 4];
  for (let i = 0; i < values.length; i++) {
    const o = i * 4;
    if (canvas.dataset.kind === "heatmap") {
      const v = values[i] / 255;
      const [r, g, b] = heatColor(v);
      data[o] = r; data[o + 1] = g; data[o + 2] = b; data[o + 3] = Math.round(255 * Math.min(1, v * 1.2));
    } else {
      const edge = outline && values[i] > 0 &&
        (!values[i - 1] || !values[i + 1] || !values[i - w] || !values[i + w]);
      const visible = outline ? edge : values[i] > 0;
      data[o] = color[0]; data[o + 1] = color[1]; data[o + 2] = color[2]; data[o + 3] = visible ? 255 : 0;
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

for (const canvas of stage.querySelectorAll("canvas[data-src]")) paint(canvas);

for (const box of root.querySelectorAll("[data-toggle]")) {
  box.addEventListener("change", () => {
    stage.querySelector(`[data-layer="${box.dataset.toggle}"]`).hidden = !box.checked;
  });
}

const opacity = root.querySelector("[data-opacity]");
const setOpacity = () => stage.style.setProperty("--overlay-opacity", opacity.value / 100);
opacity.addEventListener("input", setOpacity);
setOpacity();

function submitWith(buttonId) {
  const button = document.getElementById(buttonId);
  button.form.requestSubmit(button);
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "h") stage.classList.toggle("overlays-hidden");
  else if (key === "a" && root.dataset.approveButton) submitWith(root.dataset.approveButton);
  else if (key === "r" && root.dataset.rejectButton) submitWith(root.dataset.rejectButton);
  else if (key === "n") document.getElementById(root.dataset.nextForm).requestSubmit();
});
