"""Reading images and turning them into normalised tensors."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ml.config import EnsembleManifest


def image_to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale scans become three equal channels, as ImageNet-style networks expect."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        span = max(float(array.max() - array.min()), 1.0)
        image = Image.fromarray(((array - array.min()) * 255.0 / span).astype(np.uint8))
    return image.convert("RGB")


def images_to_tensor(images: list[Image.Image], manifest: EnsembleManifest) -> torch.Tensor:
    size = manifest.input_size
    arrays = [np.asarray(image_to_rgb(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
              for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(manifest.mean).view(1, 3, 1, 1)
    std = torch.tensor(manifest.std).view(1, 3, 1, 1)
    return (batch - mean) / std
