"""Scores of diagnoses, calibration and masks: pure functions of arrays, without I/O.

Classification scores come from scikit-learn; calibration and mask overlap are computed here (see each function).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

ECE_BINS = 15


def accuracy(truth, predicted) -> float:
    return float(accuracy_score(truth, predicted))


def balanced_accuracy(truth, predicted) -> float:
    """Mean recall over the classes present in `truth`."""
    with warnings.catch_warnings():  # scikit-learn warns when `predicted` holds a class absent from `truth`
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(truth, predicted))


def auroc(positive, scores) -> float | None:
    """The chance that a random positive scores above a random negative, ties counting half; None without both."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, np.asarray(scores, dtype=float)))


# scikit-learn's calibration_curve bins [lo, hi) and drops empty bins; the reliability plot needs every bin.
def reliability_bins(confidence, correct, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin (lo, hi] of confidence: mean confidence, accuracy (both nan when empty) and count."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        bin_accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return mean_confidence, bin_accuracy, counts


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    mean_confidence, bin_accuracy, counts = reliability_bins(confidence, correct, bins)
    filled = counts > 0
    gaps = np.abs(bin_accuracy[filled] - mean_confidence[filled])
    return float(np.sum(counts[filled] * gaps) / counts.sum())


# Not jaccard_score / f1_score: they score two empty masks 0 by default, and their label checks are ~150x slower.
def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree perfectly."""
    union = np.logical_or(predicted, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, truth).sum() / union)


def mask_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; two empty masks agree perfectly."""
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(predicted, truth).sum() / total)


def pointing_hit(heatmap: np.ndarray, region: np.ndarray) -> bool:
    """Whether the heatmap's peak (its first maximal pixel) lies inside the boolean region."""
    return bool(region.flat[int(np.argmax(heatmap))])


def boxes_mask(boxes: list[tuple[float, float, float, float]], shape: tuple[int, int]) -> np.ndarray:
    """The boxes (x1, y1, x2, y2 in pixels) filled; a pixel belongs to a box when its centre does."""
    rows = np.arange(shape[0])[:, None] + 0.5
    cols = np.arange(shape[1])[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask |= (cols >= x1) & (cols <= x2) & (rows >= y1) & (rows <= y2)
    return mask


def mean_or_none(values) -> float | None:
    return float(np.mean(values)) if len(values) else None
