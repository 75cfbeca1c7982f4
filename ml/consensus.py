"""From per-model heatmaps and diagnoses to one consensus mask and a review flag."""
from __future__ import annotations

import numpy as np


def heatmap_binarize(heatmap: np.ndarray, fraction: float) -> np.ndarray:
    """Pixels above `fraction` of the map's maximum; an all-zero map gives an empty mask."""
    peak = float(heatmap.max())
    if peak <= 0:
        return np.zeros(heatmap.shape, dtype=bool)
    return heatmap > fraction * peak


def consensus_mask(heatmaps: list[np.ndarray], labels: list[int], diagnosis: int, disease_classes: list[int],
                   fraction: float) -> np.ndarray:
    """The paper's rule: intersect the binarised maps of the models that agree with the ensemble's diagnosis.

    Heatmaps are min-max scaled per image, so any threshold finds something; a healthy diagnosis therefore gives
    an empty mask instead of an outline of nothing.
    """
    shape = heatmaps[0].shape
    agreeing = [heatmap for heatmap, label in zip(heatmaps, labels) if label == diagnosis]
    if diagnosis not in disease_classes or not agreeing:  # with no agreeing map the loop would mark every pixel
        return np.zeros(shape, dtype=bool)
    mask = np.ones(shape, dtype=bool)
    for heatmap in agreeing:
        mask &= heatmap_binarize(heatmap, fraction)
    return mask


def review_flag(model_names: list[str], labels: list[int], diagnosis: int, uncertainty: float, threshold: float,
                classes: list[str]) -> str:
    """Why an image needs a radiologist, or "" when the panel agrees with confidence."""
    reasons = []
    dissenters = [f"{name} says {classes[label]}" for name, label in zip(model_names, labels) if label != diagnosis]
    if dissenters:
        reasons.append(f"models disagree with {classes[diagnosis]}: " + ", ".join(dissenters))
    if uncertainty > threshold:
        reasons.append(f"uncertain: predictive entropy {uncertainty:.2f} > {threshold:.2f}")
    return "; ".join(reasons)
