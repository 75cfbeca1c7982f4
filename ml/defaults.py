"""Choosing the annotation defaults on the validation split, since the paper gives none."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ml.config import AnnotateConfig
from ml.consensus import consensus_mask, heatmap_binarize
from ml.metrics import mask_iou

FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 1.0, 0.05))


def uncertainty_threshold_choose(uncertainty: list[float], correct: list[bool], target_accuracy: float) -> float:
    """The highest threshold whose unflagged images (uncertainty at or below it) are still right at least
    `target_accuracy` of the time: as few images for the radiologist as that accuracy allows. 0 flags all."""
    uncertainty, correct = np.asarray(uncertainty), np.asarray(correct)
    chosen = 0.0
    for threshold in THRESHOLDS:
        kept = uncertainty <= threshold
        if kept.any() and correct[kept].mean() >= target_accuracy:
            chosen = threshold
    return chosen


def binarize_fraction_choose(results, truths: list[np.ndarray | None], disease_classes: list[int],
                             classes: list[str], config: AnnotateConfig) -> tuple[float, float] | None:
    """The fraction of each heatmap's maximum that gives the best mean consensus IoU on images with a lesion mask;
    None when no such image was diagnosed as diseased."""
    scored = [(result, truth) for result, truth in zip(results, truths)
              if truth is not None and truth.any() and classes.index(result.diagnosis) in disease_classes]
    if not scored:
        return None
    best = None
    for fraction in FRACTIONS:
        trial = replace(config, binarize="fraction", binarize_fraction=fraction)
        ious = []
        for result, truth in scored:
            masks = [heatmap_binarize(opinion.heatmap, trial) for opinion in result.opinions]
            labels = [classes.index(opinion.label) for opinion in result.opinions]
            mask = consensus_mask(masks, labels, classes.index(result.diagnosis), disease_classes, trial.consensus)
            ious.append(mask_iou(mask, truth))
        if best is None or np.mean(ious) > best[1]:
            best = (fraction, float(np.mean(ious)))
    return best
