"""Fine-tuning an ensemble on reviewed images, and judging the result against the ensemble it started from.

Every image teaches its label (cross-entropy). Where a radiologist approved a non-empty mask of a disease class, a
second term pulls each model's class activation map toward that mask. The members all end in global average pooling
and one linear layer, so a model's XGrad-CAM toward class c equals, up to a positive factor, the class activation map
Σ_k w_ck A_k of its last convolutional features A: the gradient of logit c by A_k(i, j) is w_ck / (h·w) everywhere,
which is exactly XGrad-CAM's weight for channel k. That map is differentiable in the weights, so the explanation the
reviewers see can be trained directly.

A fixed share of the images, chosen by content hash, is held out: never trained on, it scores both the candidate and
its parent, and `promotion_decide` compares the two.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import tv_tensors

from ml.config import AnnotateConfig, EnsembleManifest, SegmenterConfig
from ml.clicks import lesion_masks_judge
from ml.data import augmentation, images_to_tensor
from ml.ensemble import MANIFEST_NAME, Ensemble, annotate, load_ensemble, manifest_save, save_ensemble
from ml.evaluate import ENSEMBLE, image_score, metrics_summarize
from ml.interactive import ClickRefiner, RefinerTrainConfig, refiner_from_member, refiner_sample, refiner_train
from ml.models import imagenet_weights_resolve, model_classifier
from ml.segment import (MIN_GATE_IMAGES, SegmentTrainConfig, proposal_source_choose, segment_targets, segmenter_build,
                        segmenter_train)
from ml.train import class_weights, code_version, image_preload

log = logging.getLogger(__name__)

EPSILON = 1e-6
MIN_REFINER_MASKS = 10  # approved lesion masks a click refiner needs to learn from
# Shares of the progress bar: the parent's evaluation, training, then the candidate's evaluation.
PROGRESS_PARENT, PROGRESS_TRAINED = 0.05, 0.9


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-4  # a tenth of training from scratch: small steps away from what the parent learnt
    weight_decay: float = 1e-4
    # λ: cross-entropy + λ · (1 − soft IoU of the class activation map and the mask). On the demo's held-out images
    # 1.0 doubled the mask IoU but halved balanced accuracy; 0.3 kept the accuracy of label-only fine-tuning.
    cam_weight: float = 0.3
    validation_percent: int = 20  # images held out by content hash, never trained on
    min_validation_per_class: int = 2  # with fewer held-out images of any class the candidate cannot be judged
    mc_samples: int | None = None  # T of the held-out evaluation; None: the checkpoint's own
    # int8 rounds each weight to 1/127 of its channel's largest: a fine-tuning step is often smaller than that.
    weights_dtype: str = "float32"
    # The segmentation member's epochs on the approved masks (and pseudo-masks of the rest); 0 keeps the parent's.
    segmenter_epochs: int = 10
    # The click refiner's epochs on the approved lesion masks (from at least MIN_REFINER_MASKS); 0 keeps the parent's.
    refiner_epochs: int = 10
    parent_version: str = ""  # the name of the version it starts from, recorded in the manifest
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.segmenter_epochs < 0 or self.refiner_epochs < 0:
            raise ValueError("segmenter_epochs and refiner_epochs must not be negative")
        if self.cam_weight < 0:
            raise ValueError("cam_weight must not be negative")
        if not 0 <= self.validation_percent < 100:
            raise ValueError("validation_percent must be in [0, 100)")


@dataclass
class FinetuneSample:
    key: str  # the image's SHA-256 in hex: it decides the held-out split and enters the data hash
    image: Image.Image
    label: str  # one of the ensemble's classes, or a label its label map knows
    mask: np.ndarray | None = None  # bool, the image's size: an approved lesion mask; None or empty: label only


@dataclass
class FinetuneResult:
    folder: Path
    manifest: EnsembleManifest
    metrics: dict  # the candidate on the held-out images
    parent_metrics: dict  # the ensemble it started from, on the same images
    train_images: int
    validation_images: int
    masks_used: int  # training images whose mask entered the CAM term
    cam_loss: dict[str, float]  # per member, the mean CAM term (1 − soft IoU, before λ) of the last epoch


class FinetuneCancelled(Exception):
    """`should_stop()` answered True; `out_dir` may hold part of a checkpoint, for the caller to remove."""


class FinetuneError(ValueError):
    """The samples cannot be fine-tuned on; trying again will not help."""


def held_out(key: str, percent: int) -> bool:
    """Whether an image is in the validation share. A function of its content hash alone, so an image stays on its
    side however many images are approved later."""
    return int(key[:8], 16) % 100 < percent


def class_activation_maps(features: torch.Tensor, classifier_weight: torch.Tensor,
                          classes: torch.Tensor) -> torch.Tensor:
    """Each image's ReLU(Σ_k w_ck A_k) toward its class c, divided by its maximum: (batch, h, w) in [0, 1]."""
    maps = torch.einsum("bkhw,bk->bhw", features, classifier_weight[classes]).clamp_min(0)
    return maps / (maps.amax((1, 2), keepdim=True) + EPSILON)


def cam_mask_loss(features: torch.Tensor, classifier_weight: torch.Tensor, classes: torch.Tensor,
                  masks: torch.Tensor) -> torch.Tensor:
    """Mean 1 − soft IoU of each image's class activation map and its mask ((batch, H, W) in [0, 1]).

    The mask is averaged down to the feature map's size, so a lesion smaller than one cell still counts by the share
    of the cell it covers.
    """
    maps = class_activation_maps(features, classifier_weight, classes)
    target = F.adaptive_avg_pool2d(masks[:, None].float(), maps.shape[-2:])[:, 0]
    intersection = (maps * target).sum((1, 2))
    union = (maps + target - maps * target).sum((1, 2))
    return (1 - intersection / (union + EPSILON)).mean()


def promotion_decide(candidate: dict, current: dict, min_per_class: int) -> tuple[bool, str]:
    """Whether the candidate may replace the version in use, and why, in a sentence for the page.

    Both dicts are `heldout_metrics` on the same images. The candidate must not be worse on balanced accuracy, nor on
    mask IoU where the held-out images have approved masks; with fewer than `min_per_class` held-out images of any
    class there is too little to judge, and it is not promoted.
    """
    counts = candidate["images_per_class"]
    if any(count < min_per_class for count in counts.values()):
        listed = ", ".join(f"{count} {name}" for name, count in counts.items())
        return False, (f"Not promoted: too few held-out images to judge it ({listed}); each class needs at least "
                       f"{min_per_class}. Approve more images and fine-tune again.")
    compared = [("balanced accuracy", "balanced_accuracy")]
    if candidate["iou"] is not None and current["iou"] is not None:
        compared.append(("mask IoU", "iou"))
    numbers = [(name, candidate[key], current[key]) for name, key in compared]
    worse = [f"{name} {new:.1%} < {old:.1%}" for name, new, old in numbers if new < old]
    if worse:
        return False, (f"Not promoted: worse than the version in use on the {candidate['images']} held-out images: "
                       f"{', '.join(worse)}.")
    shown = ", ".join(f"{name} {new:.1%} vs {old:.1%}" for name, new, old in numbers)
    no_masks = "" if len(compared) == 2 else "; no held-out image has an approved mask, so IoU was not compared"
    return True, (f"Promoted: not worse than the version in use on the {candidate['images']} held-out images "
                  f"({shown}{no_masks}).")


def finetune(ensemble_dir: str | Path, samples: list[FinetuneSample], out_dir: str | Path,
             config: FinetuneConfig = FinetuneConfig(),
             on_progress: Callable[[float, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> FinetuneResult:
    """Fine-tune the ensemble in `ensemble_dir` on the samples outside the held-out share, write it to `out_dir` as
    a checkpoint `load_ensemble` reads, and score it and its parent on the held-out share.

    `on_progress(fraction, message)` is called after every batch; `should_stop()` before every batch, and True
    raises FinetuneCancelled.
    """
    on_progress = on_progress or (lambda fraction, message: None)
    should_stop = should_stop or (lambda: False)
    started = time.monotonic()
    torch.manual_seed(config.seed)
    parent = load_ensemble(ensemble_dir, device=config.device)
    manifest = parent.manifest
    labels = [_class_index(manifest, sample.label) for sample in samples]
    validation = [i for i, sample in enumerate(samples) if held_out(sample.key, config.validation_percent)]
    train = [i for i, sample in enumerate(samples) if not held_out(sample.key, config.validation_percent)]
    if not train:
        raise FinetuneError(f"none of the {len(samples)} images is outside the held-out {config.validation_percent} %"
                            f": there is nothing to train on")
    evaluation = manifest.annotate if config.mc_samples is None else replace(manifest.annotate,
                                                                             mc_samples=config.mc_samples)
    held = [samples[i] for i in validation]
    held_labels = [labels[i] for i in validation]

    def parent_progress(done, total):
        on_progress(PROGRESS_PARENT * done / total, f"scoring the version in use on {total} held-out images")

    parent_metrics = heldout_metrics(parent, held, held_labels, evaluation, parent_progress, should_stop)

    candidate = Ensemble(manifest=copy.deepcopy(manifest), models=copy.deepcopy(parent.models), device=parent.device,
                         segmenter=copy.deepcopy(parent.segmenter), refiner=copy.deepcopy(parent.refiner))
    items = [_train_item(samples[i], labels[i], manifest) for i in train]
    weights = class_weights([item.label for item in items], len(manifest.classes)).to(candidate.device)
    batches_per_member = config.epochs * -(-len(items) // config.batch_size)
    cam_loss, cross_entropy, seconds = {}, {}, {}
    for member, (arch, model) in enumerate(candidate.models.items()):
        def member_progress(done, message, member=member):
            share = (member + done / batches_per_member) / len(candidate.models)
            on_progress(PROGRESS_PARENT + (PROGRESS_TRAINED - PROGRESS_PARENT) * share, message)

        member_started = time.monotonic()
        cross_entropy[arch], cam_loss[arch] = _member_finetune(arch, model, items, weights, manifest, config,
                                                               member_progress, should_stop)
        seconds[arch] = round(time.monotonic() - member_started, 1)

    def stage_progress(stage: str):
        def progress(done, total, loss):
            if should_stop():
                raise FinetuneCancelled
            on_progress(PROGRESS_TRAINED, f"{stage}: batch {done}/{total}, loss {loss:.3f}")
        return progress

    trained = [samples[i] for i in train]
    segmenter = (segmenter_finetune(candidate, trained, held, config, stage_progress("segmentation member"))
                 if config.segmenter_epochs else {})
    refiner = (refiner_finetune(candidate, trained, held, config, stage_progress("click refiner"))
               if config.refiner_epochs else {})
    masks_used = sum(item.mask is not None for item in items)
    candidate.manifest.weights_dtype = config.weights_dtype
    candidate.manifest.metrics = {}
    candidate.manifest.training = {
        "finetuned_from": config.parent_version,
        "parent_manifest_sha256": hashlib.sha256((Path(ensemble_dir) / MANIFEST_NAME).read_bytes()).hexdigest(),
        "data_sha256": samples_hash(samples, labels),
        "images": len(samples), "train_images": len(train), "validation_images": len(validation),
        "masks_used": masks_used, "validation_percent": config.validation_percent,
        "epochs": config.epochs, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay, "cam_weight": config.cam_weight, "cam_term": "1 - soft IoU",
        "last_epoch_cross_entropy": cross_entropy, "last_epoch_cam_term": cam_loss,
        "seconds_per_member": seconds, "segmenter": segmenter, "refiner": refiner, "seed": config.seed,
        "code_version": code_version(),
    }
    out_dir = Path(out_dir)
    save_ensemble(candidate, out_dir)
    # Scored as stored and read back, so the numbers describe exactly the weights that would be used.
    saved = load_ensemble(out_dir, device=config.device)

    def candidate_progress(done, total):
        on_progress(PROGRESS_TRAINED + (1 - PROGRESS_TRAINED) * done / total,
                    f"scoring the candidate on {total} held-out images")

    metrics = heldout_metrics(saved, held, held_labels, evaluation, candidate_progress, should_stop)
    saved.manifest.metrics = {"held_out": metrics, "parent_held_out": parent_metrics}
    saved.manifest.training["seconds"] = round(time.monotonic() - started, 1)
    manifest_save(saved.manifest, out_dir)
    log.info("fine-tuned %s on %d images (%d with masks) in %.0f s: held-out %s, parent %s", ensemble_dir,
             len(train), masks_used, time.monotonic() - started, metrics, parent_metrics)
    return FinetuneResult(folder=out_dir, manifest=saved.manifest, metrics=metrics, parent_metrics=parent_metrics,
                          train_images=len(train), validation_images=len(validation), masks_used=masks_used,
                          cam_loss=cam_loss)


def segmenter_finetune(candidate: Ensemble, train: list[FinetuneSample], held: list[FinetuneSample],
                       config: FinetuneConfig, on_batch=None) -> dict:
    """Train the candidate's segmentation member (the parent's, else a new one on ImageNet weights) on the training
    samples' approved masks and the pseudo-masks of the lesion images without one, then let the gate choose on the
    held-out approved masks whether it or the consensus proposes; the report for the manifest."""
    manifest = candidate.manifest
    started = time.monotonic()
    labels = [manifest.class_of(s.label) for s in train]
    without_mask = [i for i, s in enumerate(train) if s.mask is None and labels[i] != manifest.healthy_class]
    annotations = dict(zip(without_mask, annotate(candidate, [train[i].image for i in without_mask])))
    approved = {i: s.mask for i, s in enumerate(train) if s.mask is not None}
    train_config = SegmentTrainConfig(epochs=config.segmenter_epochs, seed=config.seed)
    targets = segment_targets([s.image for s in train], labels, [annotations.get(i) for i in range(len(train))],
                              approved, manifest.healthy_class, train_config.approved_weight,
                              train_config.pseudo_masks_beside_approved)
    if len(targets) < 2:
        return {"trained": False, "reason": f"{len(targets)} images with a target; at least 2 are needed"}
    if candidate.segmenter is None:
        config_member = SegmenterConfig()
        weights = imagenet_weights_resolve([config_member.encoder], {}, use_hub=False)[config_member.encoder]
        candidate.segmenter = segmenter_build(config_member, weights, config.seed).to(candidate.device)
        manifest.segmenter = config_member
    losses = segmenter_train(candidate.segmenter, targets, train_config, manifest.mean, manifest.std,
                             candidate.device, on_batch)
    judged = [s for s in held if s.mask is not None]
    results = annotate(candidate, [s.image for s in judged])
    source, gate = proposal_source_choose([r.segmentation_mask for r in results], [r.consensus_mask for r in results],
                                          [s.mask for s in judged])
    manifest.annotate = replace(manifest.annotate, proposal=source)
    return {"trained": True, "targets": len(targets), "approved_masks": len(approved), "epochs": train_config.epochs,
            "final_loss": round(losses[-1], 4), "gate": gate, "proposal": source,
            "seconds": round(time.monotonic() - started, 1)}


def refiner_finetune(candidate: Ensemble, train: list[FinetuneSample], held: list[FinetuneSample],
                     config: FinetuneConfig, on_batch=None) -> dict:
    """Train a click refiner on the training samples' approved lesion masks, each starting from the candidate's own
    proposal, beginning from the parent's refiner (else from the candidate's segmentation member); keep it only where
    the simulated radiologist needs fewer clicks with it on the held-out approved masks than with what the parent
    had (its refiner, or GrabCut). The report for the manifest."""
    lesions = [s for s in train if s.mask is not None and s.mask.any()]
    if len(lesions) < MIN_REFINER_MASKS:
        return {"trained": False, "reason": f"{len(lesions)} approved lesion masks; at least {MIN_REFINER_MASKS} "
                                            "are needed"}
    start = candidate.refiner or (refiner_from_member(candidate.segmenter) if candidate.segmenter else None)
    if start is None:
        return {"trained": False, "reason": "no segmentation member to start from"}
    started = time.monotonic()
    manifest = candidate.manifest
    proposals = annotate(candidate, [s.image for s in lesions])
    samples = [refiner_sample(np.asarray(s.image.convert("RGB")), s.mask, p.mask) for s, p in zip(lesions, proposals)]
    refiner = ClickRefiner(copy.deepcopy(start).to(candidate.device), manifest.mean, manifest.std, candidate.device)
    losses = refiner_train(refiner, samples, RefinerTrainConfig(epochs=config.refiner_epochs, seed=config.seed),
                           on_batch)
    judged = [s for s in held if s.mask is not None and s.mask.any()]
    if len(judged) < MIN_GATE_IMAGES:
        return {"trained": True, "kept": False, "reason": f"fewer than {MIN_GATE_IMAGES} held-out lesion masks"}
    before = (ClickRefiner(candidate.refiner, manifest.mean, manifest.std, candidate.device)
              if candidate.refiner is not None else None)
    results = annotate(candidate, [s.image for s in judged])
    cases = ([np.asarray(s.image.convert("L")) for s in judged], [s.mask for s in judged], [r.mask for r in results])
    noc_new, noc_before = lesion_masks_judge(*cases, refiner), lesion_masks_judge(*cases, before)
    kept = noc_new < noc_before
    if kept:
        candidate.refiner, manifest.refiner = refiner.net, refiner.net.config
    return {"trained": True, "kept": kept, "masks": len(samples), "epochs": config.refiner_epochs,
            "final_loss": round(losses[-1], 4), "held_out_masks": len(judged), "noc85": round(noc_new, 2),
            "noc85_before": round(noc_before, 2), "before": "refiner" if before else "grabcut",
            "seconds": round(time.monotonic() - started, 1)}


def heldout_metrics(ensemble: Ensemble, samples: list[FinetuneSample], labels: list[int], config: AnnotateConfig,
                    on_batch: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, batch_size: int = 8) -> dict:
    """Accuracy, balanced accuracy and mean consensus IoU (over disease images with a non-empty mask) of the
    ensemble on the samples, with per-member figures; None where there is nothing to measure."""
    manifest = ensemble.manifest
    per_class = {name: sum(label == index for label in labels) for index, name in enumerate(manifest.classes)}
    empty = {"images": 0, "images_per_class": per_class, "images_with_mask": 0, "accuracy": None,
             "balanced_accuracy": None, "auroc": None, "iou": None, "models": {}}
    if not samples:
        return empty
    scores = []
    for start in range(0, len(samples), batch_size):
        if should_stop is not None and should_stop():
            raise FinetuneCancelled
        chunk = samples[start:start + batch_size]
        # One seed for every ensemble scored, so the MC-Dropout draws are the same on both sides of a comparison.
        annotations = annotate(ensemble, [s.image for s in chunk], config, batch_size=batch_size, seed=start)
        for sample, label, annotation in zip(chunk, labels[start:start + batch_size], annotations):
            scores.append(image_score(annotation, label, manifest, sample.mask, []))
        if on_batch is not None:
            on_batch(start + len(chunk), len(samples))
    summary = metrics_summarize(scores, list(manifest.architectures), manifest.classes.index(manifest.healthy_class))
    whole = summary[ENSEMBLE]
    return {**empty, "images": len(samples), "images_with_mask": summary["counts"]["images_with_mask"],
            "accuracy": _rounded(whole["accuracy"]), "balanced_accuracy": _rounded(whole["balanced_accuracy"]),
            "auroc": _rounded(whole["auroc"]), "iou": _rounded(whole["iou"]),
            "models": {arch: {key: _rounded(row[key]) for key in ("accuracy", "balanced_accuracy", "iou")}
                       for arch, row in summary["models"].items()}}


def samples_hash(samples: list[FinetuneSample], labels: list[int]) -> str:
    """One hash of every image's content hash, class and mask, to tell which data a checkpoint saw."""
    entries = sorted(f"{sample.key}\t{label}\t{_mask_digest(sample.mask)}\n" for sample, label in zip(samples, labels))
    return hashlib.sha256("".join(entries).encode()).hexdigest()


@dataclass
class _TrainItem:
    image: Image.Image  # preloaded
    label: int
    mask: tv_tensors.Mask | None  # uint8 0..255 at the preloaded size, only for a disease class with a lesion


def _train_item(sample: FinetuneSample, label: int, manifest: EnsembleManifest) -> _TrainItem:
    image = image_preload(sample.image, manifest.input_size)
    mask = None
    if sample.mask is not None and sample.mask.any() and label in manifest.disease_classes:
        # Bilinear on 0/255 keeps a thin lesion as partial coverage instead of dropping it.
        resized = Image.fromarray(sample.mask.astype(np.uint8) * 255).resize(image.size, Image.BILINEAR)
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(resized).copy()))
    return _TrainItem(image=image, label=label, mask=mask)


def _member_finetune(arch: str, model: nn.Module, items: list[_TrainItem], weights: torch.Tensor,
                     manifest: EnsembleManifest, config: FinetuneConfig, on_batch, should_stop) -> tuple[float, float]:
    """Train one member in place; the mean cross-entropy and CAM term of its last epoch."""
    device = next(model.parameters()).device
    augment = augmentation(manifest.input_size)
    classifier = model_classifier(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    model.train()
    # BatchNorm keeps the running statistics of the full training set: a few dozen reviewed images, a handful per
    # batch, would drag them, and with them every image the model sees afterwards.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    done, per_epoch = 0, -(-len(items) // config.batch_size)
    for epoch in range(1, config.epochs + 1):
        order = list(range(len(items)))
        rng.shuffle(order)
        cross_entropies, cam_terms = [], []
        for batch_number, start in enumerate(range(0, len(order), config.batch_size), 1):
            if should_stop():
                raise FinetuneCancelled
            chunk = [items[i] for i in order[start:start + config.batch_size]]
            pictures, masks = [], []
            for item in chunk:
                if item.mask is None:
                    pictures.append(augment(item.image))
                else:
                    picture, mask = augment(item.image, item.mask)  # the same crop, flip and rotation for both
                    pictures.append(picture)
                    masks.append(mask.float() / 255)
            batch = images_to_tensor(pictures, manifest).to(device)
            target = torch.tensor([item.label for item in chunk], device=device)
            features = model.forward_features(batch)
            cross_entropy = F.cross_entropy(model.forward_head(features), target, weight=weights)
            loss = cross_entropy
            with_mask = torch.tensor([item.mask is not None for item in chunk], device=device)
            if masks:
                cam_term = cam_mask_loss(features[with_mask], classifier.weight, target[with_mask],
                                         torch.stack(masks).to(device))
                loss = loss + config.cam_weight * cam_term
                cam_terms += [cam_term.item()] * len(masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            cross_entropies += [cross_entropy.item()] * len(chunk)
            done += 1
            cam_text = f", CAM term {np.mean(cam_terms):.3f}" if cam_terms else ""
            on_batch(done, f"{arch}: epoch {epoch}/{config.epochs}, batch {batch_number}/{per_epoch}, "
                           f"cross-entropy {np.mean(cross_entropies):.3f}{cam_text}")
    model.eval()
    return round(float(np.mean(cross_entropies)), 4), round(float(np.mean(cam_terms)) if cam_terms else 0.0, 4)


def _class_index(manifest: EnsembleManifest, label: str) -> int:
    try:
        return manifest.classes.index(manifest.class_of(label))
    except ValueError as error:
        raise FinetuneError(str(error)) from error


def _mask_digest(mask: np.ndarray | None) -> str:
    if mask is None or not mask.any():
        return "-"
    return hashlib.sha256(f"{mask.shape}".encode() + np.packbits(mask).tobytes()).hexdigest()


def _rounded(value: float | None) -> float | None:
    # Four places: a gate comparing 0.8 with 0.8000000001 would call an equal candidate worse.
    return None if value is None else round(float(value), 4)
