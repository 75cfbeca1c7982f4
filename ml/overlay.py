"""A picture for people: the image, the models' mean heatmap, and the consensus mask's outline."""
from __future__ import annotations

import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from ml.data import image_to_rgb

OUTLINE_RGB = (255, 40, 40)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: on, with at least one of their four neighbours off."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_render(image: Image.Image, heatmap: np.ndarray, mask: np.ndarray,
                   heatmap_weight: float = 0.4) -> Image.Image:
    rgb = np.asarray(image_to_rgb(image), dtype=np.float32) / 255.0
    blended = show_cam_on_image(rgb, heatmap.astype(np.float32), use_rgb=True, image_weight=1 - heatmap_weight)
    blended[mask_outline(mask)] = OUTLINE_RGB
    return Image.fromarray(blended)
