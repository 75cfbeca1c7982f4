"""From per-model heatmaps and diagnoses to one consensus mask and a review flag."""
from __future__ import annotations

import numpy as np

from ml.config import AnnotateConfig
from ml.refine import refine


def heatmap_binarize(heatmap: np.ndarray, config: AnnotateConfig) -> np.ndarray:
    """The heatmap's "on" pixels by the configured rule; an all-zero or flat map gives an empty mask."""
    peak = float(heatmap.max())
    if peak <= 0 or peak == float(heatmap.min()):
        return np.zeros(heatmap.shape, dtype=bool)
    if config.binarize == "otsu":
        return heatmap > otsu_threshold(heatmap)
    if config.binarize == "percentile":
        return heatmap > np.percentile(heatmap, config.binarize_percentile)
    return heatmap > config.binarize_fraction * peak


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of the values' histogram (Otsu 1979).

    Every cut inside an empty gap of the histogram scores the same; the middle of those cuts is taken, so values of
    the lower class are never cut off by the bin they fall in.
    """
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2  # each bin's values stand at its centre
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    upper_edges = edges[1:]
    return float((upper_edges[best[0]] + upper_edges[best[-1]]) / 2)


def consensus_mask(masks: list[np.ndarray], labels: list[int], diagnosis: int, disease_classes: list[int],
                   rule: str = "intersection") -> np.ndarray:
    """Combine the binarised maps of the models that agree with the ensemble's diagnosis.

    The paper intersects them; union and majority are offered for comparison. Heatmaps are min-max scaled per image,
    so any threshold finds something: a healthy diagnosis therefore gives an empty mask, not an outline of nothing.
    A dissenting model's map is no evidence for the diagnosis and is left out.
    """
    agreeing = [mask for mask, label in zip(masks, labels) if label == diagnosis]
    if diagnosis not in disease_classes or not agreeing:
        return np.zeros(masks[0].shape, dtype=bool)
    votes = np.sum(agreeing, axis=0)
    if rule == "union":
        return votes >= 1
    if rule == "majority":
        return votes * 2 > len(agreeing)
    return votes == len(agreeing)


def proposal_mask(image: np.ndarray, heatmaps: list[np.ndarray], masks: list[np.ndarray], labels: list[int],
                  diagnosis: int, disease_classes: list[int], config: AnnotateConfig) -> tuple[np.ndarray, np.ndarray]:
    """The mask proposed to the radiologist and the paper's one: the consensus of the models' masks (their heatmaps
    binarised by `config`) by the configured rule, refined against the grayscale `image` by the configured method;
    and the plain intersection."""
    consensus = consensus_mask(masks, labels, diagnosis, disease_classes, config.consensus)
    agreeing = [heatmap for heatmap, label in zip(heatmaps, labels) if label == diagnosis] or heatmaps
    proposal = refine(config.refine, image, np.mean(agreeing, axis=0), consensus)
    return proposal, consensus_mask(masks, labels, diagnosis, disease_classes, "intersection")


def review_flag(model_names: list[str], labels: list[int], diagnosis: int, uncertainty: float, threshold: float,
                classes: list[str], measure: str = "entropy") -> str:
    """Why an image needs a radiologist, or "" when the panel agrees with confidence."""
    reasons = []
    dissenters = [f"{name} says {classes[label]}" for name, label in zip(model_names, labels) if label != diagnosis]
    if dissenters:
        reasons.append(f"models disagree with {classes[diagnosis]}: " + ", ".join(dissenters))
    if uncertainty > threshold:
        name = "predictive entropy" if measure == "entropy" else measure.replace("_", " ")
        reasons.append(f"uncertain: {name} {uncertainty:.2f} > {threshold:.2f}")
    return "; ".join(reasons)
