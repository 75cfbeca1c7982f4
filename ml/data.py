"""Reading images, turning them into normalised tensors, and the training augmentation."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

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


def augmentation(input_size: int) -> v2.Compose:
    """Flips, small rotations, crops and brightness/contrast; a `tv_tensors.Mask` passed along gets the same
    geometry and no colour change."""
    return v2.Compose([
        v2.RandomResizedCrop(input_size, scale=(0.7, 1.0), ratio=(0.85, 1.15)),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])
