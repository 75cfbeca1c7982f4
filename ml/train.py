"""Fine-tuning the three members on image-level labels (thin here; the training issue deepens it)."""
from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from ml.config import AnnotateConfig, EnsembleManifest
from ml.data import image_to_rgb, images_to_tensor
from ml.ensemble import Ensemble, ensemble_build, save_ensemble
from ml.models import imagenet_weights_resolve

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
    weight_decay: float = 1e-4
    patience: int = 6  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2
    seed: int = 0
    use_hub: bool = True  # ImageNet weights from timm's hub when it can be reached
    weights_files: tuple[tuple[str, str], ...] = ()  # (architecture, local ImageNet weights file)
    weights_dtype: str = "float32"
    annotate: AnnotateConfig = AnnotateConfig()


def split_stratified(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a train/validation split that keeps each class's share."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        cut = max(1, round(len(members) * val_fraction))
        val += members[:cut]
        train += members[cut:]
    return sorted(train), sorted(val)


def ensemble_train(paths: list[Path], labels: list[int], config: TrainConfig, out: Path) -> Ensemble:
    torch.manual_seed(config.seed)
    manifest = EnsembleManifest(architectures=list(config.architectures), classes=list(config.classes),
                                healthy_class=config.healthy_class, input_size=config.input_size,
                                annotate=config.annotate, weights_dtype=config.weights_dtype,
                                label_map=dict(config.label_map))
    weights = imagenet_weights_resolve(config.architectures, dict(config.weights_files), config.use_hub)
    ensemble = ensemble_build(manifest, weights)
    # Images are decoded once, a little larger than the input so random crops keep most of the field.
    preload = int(config.input_size * 1.15)
    images = [image_to_rgb(Image.open(p)).resize((preload, preload), Image.BILINEAR) for p in paths]
    train_idx, val_idx = split_stratified(labels, config.val_fraction, config.seed)
    augment = v2.Compose([
        v2.RandomResizedCrop(config.input_size, scale=(0.7, 1.0), ratio=(0.85, 1.15)),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])
    val_batch = images_to_tensor([images[i] for i in val_idx], manifest)
    val_labels = torch.tensor([labels[i] for i in val_idx])
    counts = np.bincount([labels[i] for i in train_idx], minlength=len(config.classes))
    class_weights = torch.tensor(len(train_idx) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

    val_probs = {}
    for arch, model in ensemble.models.items():
        val_probs[arch] = _train_one(arch, model, images, labels, train_idx, val_batch, val_labels, augment,
                                     class_weights, manifest, config)
    mean = torch.stack(list(val_probs.values())).mean(0)
    manifest.metrics = {
        "val_images": len(val_idx),
        "ensemble": _classification_metrics(mean, val_labels),
        **{arch: _classification_metrics(p, val_labels) for arch, p in val_probs.items()},
    }
    manifest.training = {"images": len(paths), "train_images": len(train_idx), "seed": config.seed,
                         "imagenet_weights": {arch: str(w) if w else "none (from scratch)" for arch, w in weights.items()},
                         "epochs_max": config.epochs}
    save_ensemble(ensemble, out)
    return ensemble


def _train_one(arch, model, images, labels, train_idx, val_batch, val_labels, augment, class_weights, manifest,
               config) -> torch.Tensor:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    rng = random.Random(config.seed)
    best_loss, best_state, stale = float("inf"), None, 0
    for epoch in range(config.epochs):
        model.train()
        order = list(train_idx)
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chunk = order[start:start + config.batch_size]
            if len(chunk) < 2:  # BatchNorm cannot train on a single image
                continue
            batch = images_to_tensor([augment(images[i]) for i in chunk], manifest)
            target = torch.tensor([labels[i] for i in chunk])
            loss = F.cross_entropy(model(batch), target, weight=class_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(model(val_batch), val_labels, weight=class_weights))
        log.info("%s epoch %d: validation loss %.4f", arch, epoch + 1, val_loss)
        if val_loss < best_loss:
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        return F.softmax(model(val_batch), dim=-1)


def _classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    predicted = probs.argmax(-1)
    recalls = [float((predicted[labels == c] == c).float().mean()) for c in labels.unique()]
    return {"accuracy": round(float((predicted == labels).float().mean()), 4),
            "balanced_accuracy": round(float(np.mean(recalls)), 4)}
