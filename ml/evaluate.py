"""`python -m ml evaluate`: the paper's table on a labelled data set with ground-truth masks or boxes.

Classification (accuracy, balanced accuracy, AUROC of disease vs healthy, ECE), the review flags, and how well each
model's binarised CAM and the consensus mask overlap the ground truth. The scores themselves are in ml.metrics.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ml.ensemble import annotate, load_ensemble
from ml.metrics import (ECE_BINS, accuracy, auroc, balanced_accuracy, boxes_mask, expected_calibration_error, mask_dice,
                        mask_iou, mean_or_none, pointing_hit, reliability_bins)

OVERLAY_COUNT = 16
ENSEMBLE = "ensemble"
PAPER = "paper"  # the paper's intersection of the agreeing models' binarised maps, unrefined
CONSENSUS = "consensus"  # the consensus by the manifest's rule, refined: the proposal unless the member's is
MEMBER = "segmentation"  # the segmentation member's mask, where the ensemble has one


# --- Scoring annotations ------------------------------------------------------------------------------------------


class UnknownLabelError(ValueError):
    """Rows carry labels that map to no class of the ensemble."""


@dataclass
class ImageScore:
    """What one annotated image contributes to the table; names are architectures or ENSEMBLE."""

    truth: int
    probabilities: dict[str, list[float]]
    uncertainty: float
    flagged: bool
    diagnosed_diseased: bool
    mask_iou: dict[str, float] = field(default_factory=dict)  # empty unless a diseased image with a GT mask
    mask_dice: dict[str, float] = field(default_factory=dict)
    pointing: dict[str, bool] = field(default_factory=dict)  # empty unless the image has boxes
    box_iou: float | None = None


@dataclass
class Overlay:
    image: np.ndarray  # grayscale
    mask: np.ndarray  # the consensus mask
    truth_mask: np.ndarray | None
    title: str


@dataclass
class Evaluation:
    metrics: dict
    scores: list[ImageScore]
    overlays: list[Overlay]
    architectures: list[str]
    uncertainty_threshold: float


def label_classes(manifest, labels) -> dict[str, int]:
    """Each data set label's class index; every label that maps to no class is reported at once."""
    indices, unknown = {}, []
    for label in sorted(set(labels)):
        try:
            indices[label] = manifest.classes.index(manifest.class_of(label))
        except ValueError:
            unknown.append(label)
    if unknown:
        raise UnknownLabelError(f"labels {unknown} map to no class of the ensemble {manifest.classes} "
                                f"(label map {manifest.label_map})")
    return indices


def image_score(annotation, truth: int, manifest, truth_mask: np.ndarray | None,
                boxes: list[tuple[float, float, float, float]]) -> ImageScore:
    opinions = annotation.opinions
    score = ImageScore(
        truth=truth,
        probabilities={ENSEMBLE: annotation.probabilities,
                       **{opinion.architecture: opinion.probabilities for opinion in opinions}},
        uncertainty=annotation.uncertainty,
        flagged=annotation.flagged,
        diagnosed_diseased=annotation.diagnosis != manifest.healthy_class,
    )
    predicted_masks = {ENSEMBLE: annotation.mask, PAPER: annotation.paper_mask, CONSENSUS: annotation.consensus_mask,
                       **{opinion.architecture: opinion.mask for opinion in opinions}}
    if annotation.segmentation_mask is not None:
        predicted_masks[MEMBER] = annotation.segmentation_mask
    if truth in manifest.disease_classes and truth_mask is not None and truth_mask.any():
        if truth_mask.shape != annotation.mask.shape:
            raise ValueError(f"ground-truth mask {truth_mask.shape} and image {annotation.mask.shape} differ in size")
        score.mask_iou = {name: mask_iou(mask, truth_mask) for name, mask in predicted_masks.items()}
        score.mask_dice = {name: mask_dice(mask, truth_mask) for name, mask in predicted_masks.items()}
    if boxes:
        region = boxes_mask(boxes, annotation.mask.shape)
        heatmaps = {opinion.architecture: opinion.heatmap for opinion in opinions}
        heatmaps[ENSEMBLE] = np.mean(list(heatmaps.values()), axis=0)
        score.pointing = {name: pointing_hit(heatmap, region) for name, heatmap in heatmaps.items()}
        score.box_iou = mask_iou(annotation.mask, region)
    return score


def prediction_metrics(probabilities: np.ndarray, truth: np.ndarray, healthy: int) -> dict:
    predicted = probabilities.argmax(1)
    return {
        "accuracy": accuracy(truth, predicted),
        "balanced_accuracy": balanced_accuracy(truth, predicted),
        "auroc": auroc(truth != healthy, 1.0 - probabilities[:, healthy]),
        "ece": expected_calibration_error(probabilities.max(1), predicted == truth),
    }


def mask_overlap_metrics(scores: list[ImageScore], name: str) -> dict:
    scored = [s for s in scores if s.mask_iou]
    diagnosed = [s for s in scored if s.diagnosed_diseased]
    return {
        "iou": mean_or_none([s.mask_iou[name] for s in scored]),
        "dice": mean_or_none([s.mask_dice[name] for s in scored]),
        "iou_diagnosed_diseased": mean_or_none([s.mask_iou[name] for s in diagnosed]),
        "dice_diagnosed_diseased": mean_or_none([s.mask_dice[name] for s in diagnosed]),
    }


def overlap_metrics(scores: list[ImageScore], name: str) -> dict:
    """The masks' overlap, and how often the heatmap's peak points into the boxes."""
    return {**mask_overlap_metrics(scores, name),
            "pointing": mean_or_none([s.pointing[name] for s in scores if s.pointing])}


def flag_metrics(scores: list[ImageScore]) -> dict:
    flagged = np.array([s.flagged for s in scores])
    probabilities = np.array([s.probabilities[ENSEMBLE] for s in scores])
    correct = probabilities.argmax(1) == np.array([s.truth for s in scores])
    return {
        "flagged_share": float(flagged.mean()),
        "accuracy_unflagged": mean_or_none(correct[~flagged]),
        "accuracy_flagged": mean_or_none(correct[flagged]),
        "box_iou": mean_or_none([s.box_iou for s in scores if s.box_iou is not None]),
    }


def metrics_summarize(scores: list[ImageScore], architectures: list[str], healthy: int) -> dict:
    truth = np.array([s.truth for s in scores])
    rows = {}
    for name in [ENSEMBLE, *architectures]:
        probabilities = np.array([s.probabilities[name] for s in scores])
        rows[name] = {**prediction_metrics(probabilities, truth, healthy), **overlap_metrics(scores, name)}
    rows[ENSEMBLE].update(flag_metrics(scores))
    counts = {
        "images": len(scores),
        "images_with_mask": sum(bool(s.mask_iou) for s in scores),
        "images_with_mask_diagnosed_diseased": sum(bool(s.mask_iou) and s.diagnosed_diseased for s in scores),
        "images_with_boxes": sum(bool(s.pointing) for s in scores),
        "flagged": sum(s.flagged for s in scores),
    }
    summary = {"counts": counts, ENSEMBLE: rows[ENSEMBLE], PAPER: mask_overlap_metrics(scores, PAPER),
               CONSENSUS: mask_overlap_metrics(scores, CONSENSUS),
               "models": {name: rows[name] for name in architectures}}
    if any(MEMBER in s.mask_iou for s in scores):
        summary[MEMBER] = mask_overlap_metrics(scores, MEMBER)
    return summary


# --- Reading the data set and annotating it -----------------------------------------------------------------------


def rows_read(manifest_csv: Path, limit: int | None = None) -> list[dict]:
    """The manifest's rows; with a limit, that many spread evenly over it, as manifests are often sorted by label."""
    with manifest_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]


def boxes_read(boxes_csv: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes by the image's filename, as `boxes.csv` (filename,box_class,x1,y1,x2,y2) writes it."""
    boxes = {}
    with boxes_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(row["filename"], []).append(tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2")))
    return boxes


def truth_mask_path(row: dict, root: Path, masks_dir: Path | None) -> Path | None:
    """The row's `mask_path`, else the file of the image's name in `masks_dir` if there is one."""
    if row.get("mask_path"):
        return root / row["mask_path"]
    if masks_dir is not None and (masks_dir / Path(row["filename"]).name).is_file():
        return masks_dir / Path(row["filename"]).name
    return None


def image_read(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def mask_read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def evaluate(ensemble, rows: list[dict], root: Path, config=None, boxes: dict | None = None,
             masks_dir: Path | None = None, batch_size: int = 8, seed: int = 0) -> Evaluation:
    """Annotate the rows' images (`filename`, `label`, optional `mask_path`, relative to `root`) and score them."""
    manifest = ensemble.manifest
    config = config or manifest.annotate
    boxes = boxes or {}
    classes = label_classes(manifest, [row["label"] for row in rows])
    healthy = manifest.classes.index(manifest.healthy_class)
    scores, disease_overlays, other_overlays = [], [], []
    with tqdm(total=len(rows), unit="image", desc="evaluate") as progress:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            images = [image_read(root / row["filename"]) for row in batch]
            annotations = annotate(ensemble, images, config, batch_size=batch_size, seed=seed + start)
            for row, image, annotation in zip(batch, images, annotations):
                mask_path = truth_mask_path(row, root, masks_dir)
                truth_mask = mask_read(mask_path) if mask_path else None
                truth = classes[row["label"]]
                score = image_score(annotation, truth, manifest, truth_mask, boxes.get(row["filename"], []))
                scores.append(score)
                overlays = disease_overlays if truth != healthy else other_overlays
                if len(overlays) < OVERLAY_COUNT:
                    overlays.append(overlay_of(row, image, annotation, truth_mask, score))
            progress.update(len(batch))
    metrics = metrics_summarize(scores, list(manifest.architectures), healthy)
    metrics["mc_samples"] = config.mc_samples
    return Evaluation(metrics=metrics, scores=scores, overlays=(disease_overlays + other_overlays)[:OVERLAY_COUNT],
                      architectures=list(manifest.architectures),
                      uncertainty_threshold=config.uncertainty_threshold)


def overlay_of(row: dict, image: Image.Image, annotation, truth_mask: np.ndarray | None,
               score: ImageScore) -> Overlay:
    iou = f" IoU {score.mask_iou[ENSEMBLE]:.2f}" if score.mask_iou else ""
    title = f"{Path(row['filename']).name}\n{row['label']} -> {annotation.diagnosis}{iou}"
    return Overlay(image=np.asarray(image.convert("L")), mask=annotation.mask, truth_mask=truth_mask, title=title)


# --- Reporting ----------------------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    # (metrics key, header, as a percentage)
    ("accuracy", "Accuracy", True),
    ("balanced_accuracy", "Balanced acc.", True),
    ("auroc", "AUROC", False),
    ("ece", "ECE", False),
    ("iou", "IoU", True),
    ("dice", "Dice", True),
    ("iou_diagnosed_diseased", "IoU (dx diseased)", True),
    ("dice_diagnosed_diseased", "Dice (dx diseased)", True),
    ("flagged_share", "Flagged", True),
    ("accuracy_unflagged", "Acc. unflagged", True),
    ("accuracy_flagged", "Acc. flagged", True),
]
BOX_COLUMNS = [("pointing", "Pointing", True), ("box_iou", "Box IoU", True)]


def metric_format(value: float | None, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f} %" if percent else f"{value:.3f}"


def metrics_row(metrics: dict, name: str) -> dict:
    return metrics[ENSEMBLE] if name == ENSEMBLE else metrics["models"][name]


def markdown_table(metrics: dict) -> str:
    columns = TABLE_COLUMNS + (BOX_COLUMNS if metrics["counts"]["images_with_boxes"] else [])
    lines = ["| Model | " + " | ".join(header for _, header, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    named_rows = [("Ensemble (proposed mask)", metrics[ENSEMBLE]), ("Consensus, refined", metrics[CONSENSUS]),
                  *([("Segmentation member", metrics[MEMBER])] if MEMBER in metrics else []),
                  ("Paper's intersection", metrics[PAPER]), *metrics["models"].items()]
    for name, row in named_rows:
        cells = [metric_format(row.get(key), percent) for key, _, percent in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = metrics["counts"]
    lines.append("")
    lines.append(f"{counts['images']} images, T = {metrics['mc_samples']} MC-Dropout passes; IoU/Dice over the "
                 f"{counts['images_with_mask']} diseased images with a ground-truth mask "
                 f"({counts['images_with_mask_diagnosed_diseased']} of them diagnosed diseased: the dx columns); "
                 f"model rows use each model's own binarised CAM, the ensemble row the proposed mask (the manifest's "
                 f"proposal: the consensus by its rule, refined by its method, or the segmentation member's mask), "
                 f"the paper's row the plain intersection.")
    return "\n".join(lines)


def reliability_plot(evaluation: Evaluation, path: Path) -> None:
    import matplotlib.pyplot as plt

    truth = np.array([s.truth for s in evaluation.scores])
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for name in [ENSEMBLE, *evaluation.architectures]:
        probabilities = np.array([s.probabilities[name] for s in evaluation.scores])
        _, bin_accuracy, _ = reliability_bins(probabilities.max(1), probabilities.argmax(1) == truth)
        ece = metrics_row(evaluation.metrics, name)["ece"]
        if name == ENSEMBLE:
            axes.bar(centres, np.nan_to_num(bin_accuracy), width=1 / ECE_BINS, alpha=0.4, edgecolor="black",
                     label=f"ensemble (ECE {ece:.3f})")
        else:
            axes.plot(centres, bin_accuracy, marker="o", label=f"{name} (ECE {ece:.3f})")
    axes.set(xlabel="confidence (top class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
             title=f"Reliability, {ECE_BINS} bins")
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def uncertainty_plot(evaluation: Evaluation, path: Path) -> None:
    import matplotlib.pyplot as plt

    uncertainty = np.array([s.uncertainty for s in evaluation.scores])
    predicted = np.array([np.argmax(s.probabilities[ENSEMBLE]) for s in evaluation.scores])
    correct = predicted == np.array([s.truth for s in evaluation.scores])
    figure, axes = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    axes.hist(uncertainty[correct], bins=bins, alpha=0.6, color="tab:green", label=f"correct ({correct.sum()})")
    axes.hist(uncertainty[~correct], bins=bins, alpha=0.6, color="tab:red", label=f"wrong ({(~correct).sum()})")
    axes.axvline(evaluation.uncertainty_threshold, color="black", linestyle="--", label="flag threshold")
    axes.set(xlabel="ensemble uncertainty", ylabel="images", title="Uncertainty of correct and wrong diagnoses")
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def overlay_grid_plot(overlays: list[Overlay], path: Path) -> None:
    import matplotlib.pyplot as plt

    columns = min(4, max(1, len(overlays)))
    rows = max(1, -(-len(overlays) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, overlay in zip(axes.flat, overlays):
        axis.imshow(overlay.image, cmap="gray")
        red = np.zeros((*overlay.mask.shape, 4))
        red[overlay.mask] = (1.0, 0.0, 0.0, 0.45)
        axis.imshow(red)
        if overlay.truth_mask is not None and overlay.truth_mask.any():
            axis.contour(overlay.truth_mask, levels=[0.5], colors="lime", linewidths=1)
        axis.set_title(overlay.title, fontsize=8)
    figure.suptitle("consensus mask (red), ground truth (green outline)")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def evaluation_write(evaluation: Evaluation, out: Path, model: Path, data: Path) -> str:
    """metrics.json, metrics.md and the plots in `out`; returns the Markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"model": str(model), "data": str(data), **evaluation.metrics}
    table = markdown_table(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "metrics.md").write_text(f"# Evaluation of {metrics['model']} on {metrics['data']}\n\n{table}\n")
    reliability_plot(evaluation, out / "reliability.png")
    uncertainty_plot(evaluation, out / "uncertainty.png")
    overlay_grid_plot(evaluation.overlays, out / "overlays.png")
    return table


# --- Command line -------------------------------------------------------------------------------------------------


def evaluate_command(args) -> None:
    """`python -m ml evaluate`, its flags parsed by ml.__main__."""
    ensemble = load_ensemble(args.model)
    config = ensemble.manifest.annotate
    if args.samples:
        config = dataclasses.replace(config, mc_samples=args.samples)
    rows = rows_read(args.data, args.limit)
    boxes = boxes_read(args.boxes) if args.boxes else None
    try:
        evaluation = evaluate(ensemble, rows, args.data.parent, config, boxes, args.masks, args.batch_size)
    except UnknownLabelError as error:
        raise SystemExit(f"error: {error}")
    print(evaluation_write(evaluation, args.out, args.model, args.data))
