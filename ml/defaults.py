"""Choosing the annotation defaults on the validation split, since the paper gives none."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ml.config import CONSENSUS_RULES, REFINE_METHODS, AnnotateConfig
from ml.consensus import heatmap_binarize, proposal_mask
from ml.metrics import mask_iou

FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 1.0, 0.05))


UNFLAGGED_ACCURACY = 0.97  # images that are not flagged must be right at least this often


def uncertainty_threshold_choose(uncertainty: list[float], correct: list[bool], target_accuracy: float,
                                 dissent: list[bool] | None = None) -> float:
    """The highest threshold whose unflagged images (uncertainty at or below it, and no model dissenting, which
    flags an image whatever its uncertainty) are still right at least `target_accuracy` of the time: as few images
    for the radiologist as that accuracy allows. 0 flags all."""
    uncertainty, correct = np.asarray(uncertainty), np.asarray(correct)
    dissent = np.zeros(len(uncertainty), dtype=bool) if dissent is None else np.asarray(dissent)
    chosen = 0.0
    for threshold in THRESHOLDS:
        kept = (uncertainty <= threshold) & ~dissent
        if kept.any() and correct[kept].mean() >= target_accuracy:
            chosen = threshold
    return chosen


def flag_threshold_choose(results, truths: list[str], target_accuracy: float = UNFLAGGED_ACCURACY) -> dict:
    """The flag threshold for annotated images whose true classes are `truths`, and the share of images it flags
    and the accuracy of the rest, on these images."""
    uncertainty = np.array([r.uncertainty for r in results])
    correct = np.array([r.diagnosis == truth for r, truth in zip(results, truths)])
    dissent = np.array([any(not o.agrees for o in r.opinions) for r in results])
    threshold = uncertainty_threshold_choose(uncertainty, correct, target_accuracy, dissent)
    flagged = dissent | (uncertainty > threshold)
    return {"uncertainty_threshold": threshold, "target_accuracy": target_accuracy, "images": len(results),
            "flagged_share": round(float(flagged.mean()), 4),
            "accuracy_unflagged": round(float(correct[~flagged].mean()), 4) if (~flagged).any() else None}


# How a heatmap becomes a mask, each tried with every consensus rule; the refinements are then tried on the best few.
BINARIZATIONS = ([{"binarize": "fraction", "binarize_fraction": f} for f in FRACTIONS] + [{"binarize": "otsu"}]
                 + [{"binarize": "percentile", "binarize_percentile": p} for p in (70.0, 80.0, 90.0)])
REFINED_CANDIDATES = 3


@dataclass
class ScoredImage:
    """What choosing the mask recipe needs of one annotated image with a lesion mask."""

    image: np.ndarray  # grayscale uint8
    heatmaps: list[np.ndarray]
    labels: list[int]  # each model's diagnosis
    diagnosis: int
    truth: np.ndarray


def scored_images(results, images, truths: list[np.ndarray | None], classes: list[str],
                  disease_classes: list[int]) -> list[ScoredImage]:
    """The annotated images whose ground truth outlines a lesion and whose diagnosis is a disease (a healthy
    diagnosis proposes no mask, whatever the recipe)."""
    return [ScoredImage(np.asarray(image.convert("L")), [o.heatmap for o in result.opinions],
                        [classes.index(o.label) for o in result.opinions], classes.index(result.diagnosis), truth)
            for result, image, truth in zip(results, images, truths)
            if truth is not None and truth.any() and classes.index(result.diagnosis) in disease_classes]


def recipe_iou(scored: list[ScoredImage], disease_classes: list[int], config: AnnotateConfig) -> tuple[float, float]:
    """Mean IoU with the lesion masks of the proposal made by `config`, and of the paper's intersection."""
    pairs = [proposal_mask(s.image, s.heatmaps, [heatmap_binarize(heatmap, config) for heatmap in s.heatmaps],
                           s.labels, s.diagnosis, disease_classes, config) for s in scored]
    return (float(np.mean([mask_iou(proposal, s.truth) for (proposal, _), s in zip(pairs, scored)])),
            float(np.mean([mask_iou(paper, s.truth) for (_, paper), s in zip(pairs, scored)])))


def mask_recipe_choose(scored: list[ScoredImage], disease_classes: list[int],
                       config: AnnotateConfig) -> tuple[AnnotateConfig, dict] | None:
    """The binarisation, consensus rule and refinement whose proposals overlap the lesion masks best, and a report
    of every candidate's mean IoU beside the paper's intersection; None without an image to score."""
    if not scored:
        return None
    plain = {}
    for binarization in BINARIZATIONS:
        for rule in CONSENSUS_RULES:
            trial = replace(config, consensus=rule, refine="none", **binarization)
            plain[trial] = recipe_iou(scored, disease_classes, trial)
    top = sorted(plain, key=lambda trial: plain[trial][0], reverse=True)[:REFINED_CANDIDATES]
    refined = {replace(trial, refine=method): recipe_iou(scored, disease_classes, replace(trial, refine=method))
               for trial in top for method in REFINE_METHODS if method != "none"}
    candidates = {**plain, **refined}
    best = max(candidates, key=lambda trial: candidates[trial][0])
    report = {"images": len(scored), **recipe_fields(best), "proposal_iou": round(candidates[best][0], 4),
              "paper_iou": round(candidates[best][1], 4),
              "candidates": sorted(({**recipe_fields(trial), "proposal_iou": iou}
                                    for trial, (iou, _) in candidates.items()),
                                   key=lambda row: row["proposal_iou"], reverse=True)}  # unrounded: ties sort true
    return best, report


def recipe_fields(config: AnnotateConfig) -> dict:
    """The fields of a mask recipe, as the manifest and the reports name them."""
    fields = {"binarize": config.binarize, "consensus": config.consensus, "refine": config.refine,
              "flip_maps": config.flip_maps}
    if config.binarize == "fraction":
        fields["binarize_fraction"] = config.binarize_fraction
    if config.binarize == "percentile":
        fields["binarize_percentile"] = config.binarize_percentile
    return fields
