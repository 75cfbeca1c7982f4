"""Browser benchmark of the mask editor at mammogram size: brush strokes, mask load and save on a 4096×4096 image in
headless Chromium, with a 2048×2048 image as the baseline in the same run.

    .venv/bin/python -m bench.editor [--size 4096] [--baseline 2048] [--strokes 200] [--moves 24] [--loads 5]

It serves `static/js/mask-editor.js` on two pages with the editor's markup, one per size, open side by side in one
browser, each on a generated grayscale image, and takes turns between them at every step, so that whatever else the
machine does hits both sizes alike:
- **load**: the editor loads a mask PNG the way the review page has it do (`editor.load(url)`: fetch, decode, into
  its bits and onto the screen), timed until the next animation frame. The PNG is as the server stores masks: 8-bit,
  0 and 255, here a lesion-like blob covering about 3 % of the image.
- **strokes**: a stroke is a pointerdown, `--moves` pointermoves and a pointerup dispatched in the page, timed until
  the next animation frame, so drawing and compositing count. Positions are fractions of the viewport, so both sizes
  get the same strokes at the same scale (the brush is a 40th of the image, as the editor sets it). Each stroke is
  drawn twice: **ours** is the editor as shipped (a stroke commits only the rectangle it touched); **whole-image**
  is the same stroke again committing the whole mask, as an editor that keeps full-image undo snapshots would.
- **save**: the editor saves the mask as it does on Save (`editor.upload()`: the PNG encoded from its bits, the
  multipart body, a POST to this benchmark's server, which reads it and answers 201), timed until the answer is in.
Not a test: the figures depend on the machine; the ratios between the sizes are measured in the same run.
"""
import argparse
import functools
import http.server
import io
import json
import statistics
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

STATIC = Path(__file__).resolve().parent.parent / "static"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="/static/css/app.css"></head>
<body><main class="workspace"><section class="viewer" data-review>
<div class="editor" data-mask-editor data-tool="brush" data-width="{size}" data-height="{size}" data-editable="true"
     data-save-url="/save" data-csrf-token="-">
  <div class="viewport" data-viewport>
    <div class="stage" data-stage style="width: {size}px; height: {size}px">
      <img src="/scan-{size}.png" data-picture>
      <canvas class="overlay" data-mask-canvas></canvas>
      <svg class="guides" data-guides viewBox="0 0 {size} {size}"><polyline data-polygon points=""/><g data-clicks></g><circle data-cursor r="0"/></svg>
    </div>
  </div>
</div></section></main>
<script type="module">
  import {{ MaskEditor }} from "/static/js/mask-editor.js";
  window.maskEditor = new MaskEditor(document.querySelector("[data-mask-editor]"));
</script></body></html>"""

NEXT_FRAME = "new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)))"

LOAD = f"""async (src) => {{
  const editor = window.maskEditor, start = performance.now();
  await editor.load(src);
  await {NEXT_FRAME};
  if (!editor.loaded || !editor.editable) throw new Error("the mask did not load");
  return performance.now() - start;
}}"""

# One stroke in the page; `wholeImage`: commit the whole mask instead of the stroke's rectangle.
STROKE = f"""async ([points, wholeImage]) => {{
  const editor = window.maskEditor, viewport = editor.viewport, box = viewport.getBoundingClientRect();
  const at = ([fx, fy], type) => viewport.dispatchEvent(new PointerEvent(type, {{
    clientX: box.left + fx * box.width, clientY: box.top + fy * box.height, button: 0, buttons: 1,
    pointerId: 1, bubbles: true, isPrimary: true }}));
  const start = performance.now();
  at(points[0], "pointerdown");
  for (const point of points.slice(1)) at(point, "pointermove");
  if (wholeImage) editor.stroke.box = [0, 0, editor.width, editor.height];
  at(points[points.length - 1], "pointerup");
  await {NEXT_FRAME};
  return performance.now() - start;
}}"""

SAVE = """async () => {
  const editor = window.maskEditor, start = performance.now();
  const version = await editor.upload(editor.version);
  if (version === null) throw new Error("the save was refused");
  return performance.now() - start;
}"""


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files from the folder; a POST (a save) is read whole and answered as the API does, 201 and a version."""
    received = []  # the saved bodies' sizes in bytes

    def do_POST(self):
        self.received.append(len(self.rfile.read(int(self.headers["Content-Length"]))))
        body = json.dumps({"version": len(self.received)}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(folder: Path):
    handler = functools.partial(Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)  # as annotator/png.py writes masks
    return buffer.getvalue()


def lesion_mask(size, rng):
    """A lobulated blob about a fifth of the image across, 0 and 255."""
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size
    angle = np.arctan2(ys - 0.5, xs - 0.4)
    radius = 0.1 * (1 + sum(0.15 * np.sin(k * angle + rng.uniform(0, 6.3)) / k for k in range(2, 7)))
    return np.where(np.hypot(ys - 0.5, xs - 0.4) < radius, 255, 0).astype(np.uint8)


def stroke_points(rng, moves):
    """A wandering stroke about a fifth of the image long."""
    start = rng.uniform(0.15, 0.85, size=2)
    steps = rng.normal(0, 0.012, size=(moves, 2)) + rng.uniform(-0.01, 0.01, size=2)
    return np.clip(start + np.cumsum(steps, axis=0), 0.02, 0.98).round(5).tolist()


def summary(values):
    values = sorted(values)
    return statistics.median(values), values[int(0.95 * (len(values) - 1))], values[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="image width and height in pixels")
    parser.add_argument("--baseline", type=int, default=2048, help="the baseline image's width and height")
    parser.add_argument("--strokes", type=int, default=200)
    parser.add_argument("--moves", type=int, default=24, help="pointermove events per stroke")
    parser.add_argument("--loads", type=int, default=5, help="mask loads and saves per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(args.seed)
    sizes = (args.size, args.baseline)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "static").symlink_to(STATIC)
        for size in sizes:
            (folder / f"{size}.html").write_text(PAGE.format(size=size))
            scan = rng.normal(110, 40, (size, size)).clip(0, 255).astype(np.uint8)
            (folder / f"scan-{size}.png").write_bytes(png(scan))
            (folder / f"mask-{size}.png").write_bytes(png(lesion_mask(size, rng)))
        server = serve(folder)
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pages = {}
                for size in sizes:
                    pages[size] = page = browser.new_page(viewport={"width": 1440, "height": 900})
                    page.goto(f"{url}/{size}.html")
                    page.wait_for_function("window.maskEditor !== undefined")
                    page.evaluate("window.maskEditor.ready")
                loads, saves, strokes = ({size: [] for size in sizes} for _ in range(3))
                whole = {size: [] for size in sizes}
                for i in range(args.loads):
                    for size, page in pages.items():
                        loads[size].append(page.evaluate(LOAD, f"{url}/mask-{size}.png?{i}"))  # not from the cache
                for _ in range(args.strokes):
                    points = stroke_points(rng, args.moves)
                    for size, page in pages.items():
                        strokes[size].append(page.evaluate(STROKE, [points, False]))
                        whole[size].append(page.evaluate(STROKE, [points, True]))
                Handler.received.clear()
                for _ in range(args.loads):
                    for size, page in pages.items():
                        saves[size].append(page.evaluate(SAVE))
                saved = {size: Handler.received[k::len(sizes)] for k, size in enumerate(sizes)}
                brush = {size: page.evaluate("window.maskEditor.size") for size, page in pages.items()}
                viewport = pages[args.size].evaluate("[maskEditor.canvas.width, maskEditor.canvas.height]")
                version = browser.version
                browser.close()
        finally:
            server.shutdown()

    big, small = sizes
    print(f"{args.strokes} brush strokes of {args.moves} moves, Chromium {version} headless, software rendering, "
          f"viewport canvas {viewport[0]}x{viewport[1]}")
    print(f"{'':>22}  {'median ms':>9}  {'p95 ms':>7}  {'max ms':>7}  per stroke, until the next frame")
    for size in sizes:
        for name, values in (("ours", strokes[size]), ("whole-image", whole[size])):
            label = f"{size}x{size} {name}"
            print(f"{label:>22}  " + "  ".join(f"{v:{w}.1f}" for v, w in zip(summary(values), (9, 7, 7))))
    for size in sizes:
        print(f"brush {brush[size]} px on {size}x{size}; whole-image / ours (median): "
              f"{statistics.median(whole[size]) / statistics.median(strokes[size]):.1f}x")
    print(f"p95 {big}/{small}: {summary(strokes[big])[1] / summary(strokes[small])[1]:.2f}x "
          f"(goal: p95 <= 16 ms on {big}x{big})")
    print()
    print(f"mask, median of {args.loads} (max)  {f'{big}x{big}':>16}  {f'{small}x{small}':>16}  ratio")
    for name, values in (("load ms", loads), ("save ms", saves)):
        cells = [f"{statistics.median(values[s]):8.1f} ({max(values[s]):5.1f})" for s in sizes]
        print(f"{name:<27}  {cells[0]:>16}  {cells[1]:>16}  "
              f"{statistics.median(values[big]) / statistics.median(values[small]):5.1f}x")
    print(f"{'saved body KB':<27}  {saved[big][-1] / 1024:16.0f}  {saved[small][-1] / 1024:16.0f}")


if __name__ == "__main__":
    main()
