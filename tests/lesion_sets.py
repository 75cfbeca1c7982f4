"""Tiny labelled scans for the engine's tests: no Django."""
import csv

import numpy as np
from PIL import Image

SIDE = 64


def lesion_set_write(folder, count: int, seed: int, speckled: bool = False):
    """`count` scans, every third one healthy, the rest with a dark disc and its mask; a manifest.csv as BUSI's.
    `speckled` adds a texture of each scan's own, so that no two are near-duplicates to the split's hash."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i in range(count):
        ys, xs = np.mgrid[:SIDE, :SIDE]
        centre = rng.integers(18, 46, 2)
        lesion = ((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= 10 ** 2) & (i % 3 != 0)
        pixels = np.where(lesion, 40, 170) + (rng.normal(0, 40, (SIDE, SIDE)) if speckled else 0)
        pixels = pixels.clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"scan{seed}-{i}.png")
        Image.fromarray(lesion.astype(np.uint8) * 255).save(folder / "masks" / f"scan{seed}-{i}.png")
        rows.append({"filename": f"images/scan{seed}-{i}.png", "label": "normal" if i % 3 == 0 else "malignant",
                     "mask_path": f"masks/scan{seed}-{i}.png"})
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filename", "label", "mask_path"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv", rows
