"""From the consensus of saliency maps to a mask that follows the image: one small function per method.

Each takes the grayscale image (uint8, height x width), the mean heatmap of the models that agree with the diagnosis
(float in [0, 1], same size) and the consensus mask (bool), and returns a bool mask of the same size. An empty
consensus (a healthy diagnosis) stays empty: refinement outlines a finding, it never invents one.

- `none`: the paper's consensus as it is.
- `grabcut`: OpenCV's GrabCut, seeded from the map: the consensus is probably lesion, the rest probably background,
  and where the map is low surely background. No pixel is taken as lesion for sure: a CAM's peak is often beside
  the lesion, and a sure seed there would hold the mask off it.
- `ultrasound`: an appearance prior for ultrasound, MorSeg-CAM-SAM's pipeline without SAM (arXiv 2311.11176): lesions
  are darker than the tissue around them, so after contrast enhancement (CLAHE) and smoothing, the dark regions
  (Otsu's threshold) are cut apart by a morphological opening and shape-filtered (size, inside the image, compact);
  the one the map points into most, weighted by darkness, is kept, its holes filled.

OpenCV does the image work (CLAHE, Otsu, morphology, components, GrabCut), SciPy fills the holes.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ml.config import REFINE_METHODS

GRABCUT_ITERATIONS = 4
GRABCUT_SIDE = 160  # pixels of the longer side at which GrabCut runs
SURE_BACKGROUND = 0.2  # map values (of its maximum) at or below which GrabCut takes a pixel as background for sure
MIN_AREA_FRACTION = 0.002  # a dark blob smaller than this share of the image is speckle, not a lesion
MAX_AREA_FRACTION = 0.5  # one larger than this is the image's background (e.g. the black frame), not a lesion
MIN_SOLIDITY = 0.7  # area over convex hull area: below this a dark region is a shadow or a duct, not a mass
OPENING_DIVISOR = 20  # the opening that cuts dark regions apart is 1/20 of the image's shorter side


def refine(method: str, image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask refined by `method` (one of REFINE_METHODS)."""
    if method not in REFINE_METHODS:
        raise ValueError(f"refinement must be one of {REFINE_METHODS}")
    if method == "none" or not mask.any():
        return mask
    return {"grabcut": refine_grabcut, "ultrasound": refine_ultrasound}[method](image, heatmap, mask)


def refine_grabcut(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    peak = float(heatmap.max()) or 1.0
    seeds = np.full(mask.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    seeds[heatmap <= SURE_BACKGROUND * peak] = cv2.GC_BGD
    seeds[mask] = cv2.GC_PR_FGD
    if mask.all():
        return mask  # nothing to contrast the lesion with
    # GrabCut's graph cuts cost about a second at 320 px on one core: run it at GRABCUT_SIDE and scale the result back.
    scale = min(1.0, GRABCUT_SIDE / max(image.shape))
    small = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    colour = cv2.cvtColor(cv2.resize(image, small, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    seeds = cv2.resize(seeds, small, interpolation=cv2.INTER_NEAREST)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut starts its colour models with k-means on OpenCV's RNG: the same input, the same mask
    cv2.grabCut(colour, seeds, None, background, foreground, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    lesion = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8)
    refined = cv2.resize(lesion, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return refined if refined.any() else mask


def refine_ultrasound(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    size = min(image.shape)
    enhanced = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image)
    smoothed = cv2.medianBlur(enhanced, _odd(size // 40))
    _, dark = cv2.threshold(smoothed, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(size // OPENING_DIVISOR),) * 2)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.morphologyEx(dark, cv2.MORPH_OPEN, kernel))
    # The map weighted by how dark the image is around each pixel: where it points into a dark region.
    darkness = 1.0 - cv2.GaussianBlur(image.astype(np.float32), (0, 0), size / 30) / 255.0
    pointed = heatmap * darkness
    best, best_score = 0, 0.0
    for label in range(1, count):
        blob = labels == label
        if _plausible_lesion(blob, stats[label], image.shape):
            score = float(pointed[blob].sum())
            if score > best_score:
                best, best_score = label, score
    if best == 0:
        return mask  # no dark region the map points into: keep the consensus
    return ndimage.binary_fill_holes(labels == best)


def _plausible_lesion(blob: np.ndarray, stats: np.ndarray, shape: tuple[int, int]) -> bool:
    """A dark region that may be a lesion: neither speckle nor background, inside the image (what touches the edge
    is the dark frame or acoustic shadow), and compact (a lesion is roughly convex; shadows and ducts are not)."""
    x, y, width, height, area = (int(v) for v in stats[:5])
    if not MIN_AREA_FRACTION * blob.size <= area <= MAX_AREA_FRACTION * blob.size:
        return False
    if x == 0 or y == 0 or x + width >= shape[1] or y + height >= shape[0]:
        return False
    contours, _ = cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    return hull > 0 and area / hull >= MIN_SOLIDITY


def _odd(n: int) -> int:
    return max(3, n | 1)
