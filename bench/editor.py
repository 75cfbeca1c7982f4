"""Browser benchmark of the mask editor: 200 brush strokes on a 2048×2048 image in headless Chromium.

    .venv/bin/python -m bench.editor [--size 2048] [--strokes 200] [--moves 24]

It serves `static/js/mask-editor.js` on a page with the editor's markup and a generated grayscale image, then draws
the same strokes twice, taking turns stroke by stroke: **ours** is the editor as shipped (each stroke commits only
the rectangle it touched); **whole-image** is the same editor committing the whole mask after every stroke, as an
editor that keeps full-image undo snapshots would. A stroke is a pointerdown, `--moves` pointermoves and a
pointerup dispatched in the page, timed until the next animation frame, so drawing and compositing count.
Not a test: the figures depend on the machine; the ratio between the two is measured in the same run.
"""
import argparse
import functools
import http.server
import io
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
     data-save-url="/nowhere" data-csrf-token="-">
  <div class="viewport" data-viewport>
    <div class="stage" data-stage style="width: {size}px; height: {size}px">
      <img src="/scan.png" data-picture>
      <canvas class="overlay" data-mask-canvas></canvas>
      <svg class="guides" data-guides viewBox="0 0 {size} {size}"><polyline data-polygon points=""/><g data-clicks></g><circle data-cursor r="0"/></svg>
    </div>
  </div>
</div></section></main>
<script type="module">
  import {{ MaskEditor }} from "/static/js/mask-editor.js";
  window.maskEditor = new MaskEditor(document.querySelector("[data-mask-editor]"));
</script></body></html>"""

# One stroke in the page: positions are fractions of the viewport, so both methods draw the same strokes.
STROKE = """async ([points, wholeImage]) => {
  const editor = window.maskEditor, viewport = editor.viewport, box = viewport.getBoundingClientRect();
  const original = editor.region;
  if (wholeImage) editor.region = () => ({ x: 0, y: 0, w: editor.width, h: editor.height });
  const at = ([fx, fy], type) => viewport.dispatchEvent(new PointerEvent(type, {
    clientX: box.left + fx * box.width, clientY: box.top + fy * box.height, button: 0, buttons: 1,
    pointerId: 1, bubbles: true, isPrimary: true }));
  const start = performance.now();
  at(points[0], "pointerdown");
  for (const point of points.slice(1)) at(point, "pointermove");
  at(points[points.length - 1], "pointerup");
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  editor.region = original;
  return performance.now() - start;
}"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stroke_points(rng, moves):
    """A wandering stroke about a fifth of the image long."""
    start = rng.uniform(0.15, 0.85, size=2)
    steps = rng.normal(0, 0.012, size=(moves, 2)) + rng.uniform(-0.01, 0.01, size=2)
    return np.clip(start + np.cumsum(steps, axis=0), 0.02, 0.98).round(5).tolist()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image width and height in pixels")
    parser.add_argument("--strokes", type=int, default=200)
    parser.add_argument("--moves", type=int, default=24, help="pointermove events per stroke")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "static").symlink_to(STATIC)
        (folder / "index.html").write_text(PAGE.format(size=args.size))
        scan = (rng.normal(110, 40, size=(args.size, args.size))).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(scan).save(buffer, format="PNG")
        (folder / "scan.png").write_bytes(buffer.getvalue())
        server = serve(folder)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
                page.wait_for_function("window.maskEditor !== undefined")
                page.evaluate("window.maskEditor.ready")
                times = {"ours": [], "whole-image": []}
                for _ in range(args.strokes):
                    points = stroke_points(rng, args.moves)
                    for name in times:
                        times[name].append(page.evaluate(STROKE, [points, name == "whole-image"]))
                painted = page.evaluate("window.maskEditor.foregroundPixels()")
                brush = page.evaluate("window.maskEditor.size")
                version = browser.version
                browser.close()
        finally:
            server.shutdown()

    print(f"{args.strokes} brush strokes of {args.moves} moves on a {args.size}x{args.size} image "
          f"(brush {brush} px), Chromium {version} headless, software rendering")
    print(f"{'':>12}  {'median ms':>9}  {'p95 ms':>7}  {'max ms':>7}  per stroke, until the next frame")
    for name, values in times.items():
        values = sorted(values)
        print(f"{name:>12}  {statistics.median(values):9.1f}  {values[int(0.95 * (len(values) - 1))]:7.1f}  "
              f"{values[-1]:7.1f}")
    ours, whole = statistics.median(times["ours"]), statistics.median(times["whole-image"])
    print(f"whole-image / ours: {whole / ours:.1f}x (goal >= 2x on 2048x2048)")
    print(f"mask pixels painted: {painted}")


if __name__ == "__main__":
    main()
