"""Fine-tuning the members on image-level labels, with a split that keeps near-duplicate images together."""
from __future__ import annotations

import copy
import csv
import logging
import random
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ml.calibration import ensemble_temperatures
from ml.config import TASKS, AnnotateConfig, EnsembleManifest
from ml.data import augmentation, image_to_rgb, images_to_tensor
from ml.defaults import UNFLAGGED_ACCURACY, flag_threshold_choose, mask_recipe_choose, scored_images
from ml.ensemble import Ensemble, annotate, ensemble_build, save_ensemble
from ml.models import imagenet_weights_resolve, model_classifier
from ml.split import DUPLICATE_DISTANCE, data_hash, validation_split
from ml.uncertainty import mc_dropout_probs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    architectures: tuple[str, ...]
    classes: tuple[str, ...]
    healthy_class: str
    label_map: tuple[tuple[str, str], ...] = ()  # data set label -> class, kept in the manifest
    input_size: int = 224
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    # An ImageNet-initialised backbone learns at this fraction of the head's rate, so that the first steps of a fresh
    # head do not wash out the features it came for (common practice; not measured apart from the next setting);
    # a member from scratch learns at the full rate throughout.
    pretrained_backbone_lr_scale: float = 0.1
    # ... and keeps ImageNet's BatchNorm statistics. With them re-estimated on batches of 16 scans, EfficientNet-Lite0's
    # validation loss on BUSI after 4 epochs was 2.22 (2.15, 1.84 and 2.39 with the whole net at 1e-3, 3e-4 and 1e-4);
    # with them kept, 0.55 (128 px, seed 0).
    freeze_pretrained_batchnorm: bool = True
    weight_decay: float = 1e-4
    patience: int = 6  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2
    duplicate_distance: int = DUPLICATE_DISTANCE
    variance_weight: float = 0.0  # λ of the paper's optional term: CE + λ · variance of the MC-Dropout passes
    variance_samples: int = 4  # dropout passes per image for that term
    target_accuracy: float = UNFLAGGED_ACCURACY  # unflagged validation images must be right this often
    calibrate: bool = False  # temperature-scale the panel on the validation split before the flag threshold
    seed: int = 0
    use_hub: bool = True  # ImageNet weights from timm's hub when it can be reached
    weights_files: tuple[tuple[str, str], ...] = ()  # (architecture, local ImageNet weights file)
    weights_dtype: str = "float32"
    annotate: AnnotateConfig = AnnotateConfig()


def ensemble_train(paths: list[Path], labels: list[int], config: TrainConfig, out: Path,
                   mask_paths: list[Path | None] | None = None) -> Ensemble:
    """Train every member, choose the annotation defaults on the validation split, and write the checkpoint.
    `mask_paths` (ground-truth lesion masks, where known) only serve to choose the binarisation."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    manifest = EnsembleManifest(architectures=list(config.architectures), classes=list(config.classes),
                                healthy_class=config.healthy_class, input_size=config.input_size,
                                annotate=config.annotate, weights_dtype=config.weights_dtype,
                                label_map=dict(config.label_map))
    weights = imagenet_weights_resolve(config.architectures, dict(config.weights_files), config.use_hub)
    ensemble = ensemble_build(manifest, weights)
    originals = [Image.open(p) for p in paths]
    train_idx, val_idx, groups = validation_split(originals, labels, config.val_fraction, config.seed,
                                                  config.duplicate_distance)
    images = [image_preload(image, config.input_size) for image in originals]
    augment = augmentation(config.input_size)
    val_batch = images_to_tensor([images[i] for i in val_idx], manifest)
    val_labels = torch.tensor([labels[i] for i in val_idx])
    weights_per_class = class_weights([labels[i] for i in train_idx], len(config.classes))

    val_probs, histories = {}, {}
    for arch, model in ensemble.models.items():
        val_probs[arch], histories[arch] = _train_one(arch, model, images, labels, train_idx, val_batch, val_labels,
                                                      augment, weights_per_class, manifest, config,
                                                      pretrained=weights[arch] is not None)
    mean = torch.stack(list(val_probs.values())).mean(0)
    if config.calibrate:  # on the images as annotation sees them, as `python -m ml calibrate` does
        originals_batch = images_to_tensor([originals[i] for i in val_idx], manifest)
        manifest.temperatures = ensemble_temperatures(ensemble, originals_batch, val_labels, config.annotate,
                                                      config.seed)
    val_masks = [_mask_load(mask_paths[i]) if mask_paths else None for i in val_idx]
    manifest.annotate, defaults_report = _defaults_choose(ensemble, [originals[i] for i in val_idx],
                                                          [labels[i] for i in val_idx], val_masks, config)
    manifest.metrics = {
        "val_images": len(val_idx),
        "ensemble": _classification_metrics(mean, val_labels),
        **{arch: {**_classification_metrics(p, val_labels), **histories[arch]} for arch, p in val_probs.items()},
        "defaults": defaults_report,
    }
    manifest.training = {
        "images": len(paths), "train_images": len(train_idx), "near_duplicate_groups": len(set(groups)),
        "data_sha256": data_hash(paths, labels), "code_version": code_version(),
        "imagenet_weights": {arch: str(w) if w else "none (from scratch)" for arch, w in weights.items()},
        "config": {k: v for k, v in asdict(config).items() if k not in ("annotate", "architectures", "classes")},
        "seconds": round(time.monotonic() - started),
    }
    save_ensemble(ensemble, out)
    return ensemble


def task_rows_read(data: Path, task: str, excluded: set[str] = frozenset()) -> tuple[list, list[int], list]:
    """The manifest's image paths, class indices under `task` and lesion mask paths (None where there is none);
    rows named in `excluded` or whose label the task does not know are left out."""
    classes, _, mapping = TASKS[task]
    paths, labels, masks = [], [], []
    with data.open() as f:
        for row in csv.DictReader(f):
            if Path(row["filename"]).name in excluded or row["label"] not in mapping:
                continue
            paths.append(data.parent / row["filename"])
            labels.append(classes.index(mapping[row["label"]]))
            masks.append(data.parent / row["mask_path"] if row.get("mask_path") else None)
    return paths, labels, masks


def image_preload(image: Image.Image, input_size: int) -> Image.Image:
    """An image decoded once, a little larger than the input so that random crops keep most of the field."""
    preload = int(input_size * 1.15)
    return image_to_rgb(image).resize((preload, preload), Image.BILINEAR)


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequencies, for a cross-entropy in which each class counts alike."""
    counts = np.bincount(labels, minlength=num_classes)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def _train_one(arch, model, images, labels, train_idx, val_batch, val_labels, augment, weights_per_class, manifest,
               config, pretrained: bool) -> tuple[torch.Tensor, dict]:
    optimizer = torch.optim.AdamW(parameter_groups(model, config, pretrained), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    rng = random.Random(config.seed)
    best = {"val_loss": float("inf"), "epoch": 0}
    best_state, stale = None, 0
    for epoch in range(1, config.epochs + 1):
        model_train_mode(model, freeze_batchnorm=pretrained and config.freeze_pretrained_batchnorm)
        order = list(train_idx)
        rng.shuffle(order)
        batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        progress = tqdm(batches, desc=f"{arch} epoch {epoch}/{config.epochs}", leave=False, unit="batch")
        for chunk in progress:
            if len(chunk) < 2:  # BatchNorm cannot train on a single image
                continue
            batch = images_to_tensor([augment(images[i]) for i in chunk], manifest)
            target = torch.tensor([labels[i] for i in chunk])
            loss = _loss(model, batch, target, weights_per_class, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress.set_postfix(loss=f"{loss.item():.3f}")
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(model(val_batch), val_labels, weight=weights_per_class))
        log.info("%s epoch %d: validation loss %.4f", arch, epoch, val_loss)
        if val_loss < best["val_loss"]:
            best, best_state, stale = {"val_loss": round(val_loss, 4), "epoch": epoch}, copy.deepcopy(
                model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        return F.softmax(model(val_batch), dim=-1), {"best_epoch": best["epoch"], "val_loss": best["val_loss"],
                                                     "epochs_run": epoch}


def model_train_mode(model, freeze_batchnorm: bool) -> None:
    """Training mode, with the BatchNorm layers left in eval mode (their running statistics kept) if asked."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def parameter_groups(model, config: TrainConfig, pretrained: bool) -> list[dict]:
    """The head at the learning rate; the backbone at a fraction of it where it starts from ImageNet weights."""
    head = {id(p) for p in model_classifier(model).parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head]
    scale = config.pretrained_backbone_lr_scale if pretrained else 1.0
    return [{"params": list(model_classifier(model).parameters()), "lr": config.learning_rate},
            {"params": backbone, "lr": config.learning_rate * scale}]


def _defaults_choose(ensemble, images, labels, truths, config) -> tuple[AnnotateConfig, dict]:
    """The flag threshold (and, with lesion masks, how heatmaps become the proposed mask) that the validation split
    supports."""
    manifest = ensemble.manifest
    results = annotate(ensemble, images, config.annotate)
    report = flag_threshold_choose(results, [manifest.classes[label] for label in labels], config.target_accuracy)
    chosen = replace(config.annotate, uncertainty_threshold=report["uncertainty_threshold"])
    scored = scored_images(results, images, truths, manifest.classes, manifest.disease_classes)
    choice = mask_recipe_choose(scored, manifest.disease_classes, chosen)
    if choice is not None:
        chosen, recipe = choice
        report["mask_recipe"] = {key: value for key, value in recipe.items() if key != "candidates"}
    log.info("defaults chosen on the validation split: %s", report)
    return chosen, report


def _mask_load(path) -> np.ndarray | None:
    return np.asarray(Image.open(path).convert("L")) > 0 if path else None


def _loss(model, batch, target, weights_per_class, config) -> torch.Tensor:
    """Cross-entropy, plus λ times the variance of the class probabilities over MC-Dropout passes when λ > 0."""
    if config.variance_weight <= 0:
        return F.cross_entropy(model(batch), target, weight=weights_per_class)
    pooled = model.global_pool(model.forward_features(batch))  # before dropout: the passes drop it themselves
    probs = mc_dropout_probs(model_classifier(model), pooled, config.variance_samples, config.annotate.dropout)
    log_probs = torch.log(probs.clamp_min(1e-12))
    cross_entropy = torch.stack([F.nll_loss(lp, target, weight=weights_per_class) for lp in log_probs]).mean()
    return cross_entropy + config.variance_weight * probs.var(0).sum(-1).mean()


def _classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    predicted = probs.argmax(-1)
    recalls = [float((predicted[labels == c] == c).float().mean()) for c in labels.unique()]
    return {"accuracy": round(float((predicted == labels).float().mean()), 4),
            "balanced_accuracy": round(float(np.mean(recalls)), 4)}


def code_version() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_table(metrics: dict) -> str:
    """The final table: each member and the ensemble on the validation split."""
    rows = [f"{'model':<20} {'accuracy':>9} {'balanced':>9} {'val loss':>9} {'best epoch':>11}"]
    for name, values in metrics.items():
        if isinstance(values, dict) and "accuracy" in values:
            rows.append(f"{name:<20} {values['accuracy']:>9.3f} {values['balanced_accuracy']:>9.3f} "
                        f"{values.get('val_loss', float('nan')):>9.4f} {values.get('best_epoch', '–'):>11}")
    return "\n".join(rows)
