"""The panel of three models, its checkpoint folder, and the `annotate()` contract."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.cam import BatchedXGradCam
from ml.checkpoint import weights_load, weights_save
from ml.config import AnnotateConfig, EnsembleManifest
from ml.consensus import heatmap_binarize, proposal_mask, review_flag
from ml.data import images_to_tensor
from ml.interactive import REFINER_NAME, refiner_net_load
from ml.models import model_build, model_classifier
from ml.segment import SegmentationNet, segmenter_probabilities
from ml.uncertainty import entropy, mc_dropout_probs, mutual_information

MANIFEST_NAME = "manifest.json"
SEGMENTER_NAME = "segmenter.safetensors"


@dataclass
class Ensemble:
    manifest: EnsembleManifest
    models: dict[str, nn.Module]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    segmenter: SegmentationNet | None = None  # the segmentation member (ml/segment.py), configured by the manifest
    refiner: SegmentationNet | None = None  # the click refiner (ml/interactive.py), configured by the manifest

    def to(self, device: str | torch.device) -> "Ensemble":
        self.device = torch.device(device)
        for model in self.models.values():
            model.to(self.device)
        for net in (self.segmenter, self.refiner):
            if net is not None:
                net.to(self.device)
        return self


@dataclass
class ModelOpinion:
    architecture: str
    label: str
    agrees: bool
    probabilities: list[float]  # MC mean per class
    std: list[float]  # MC standard deviation per class
    entropy: float  # normalised predictive entropy of this model's MC mean
    mutual_information: float
    heatmap: np.ndarray  # float32 in [0, 1], the image's own size, toward `ImageAnnotation.cam_class`
    mask: np.ndarray  # bool, the heatmap binarised by the configured rule


@dataclass
class ImageAnnotation:
    diagnosis: str
    probabilities: list[float]  # ensemble mean per class
    uncertainty: float  # the configured measure: ensemble predictive entropy or mutual information, 0..1
    flagged: bool
    flag_reason: str
    cam_class: str  # the disease class the heatmaps explain
    mask: np.ndarray  # bool, the image's own size: the proposal, by `AnnotateConfig.proposal` one of the two below
    paper_mask: np.ndarray  # bool: the paper's intersection, unrefined, reported beside the proposal
    consensus_mask: np.ndarray  # bool: the consensus by the configured rule, refined (the proposal unless the member's)
    segmentation_mask: np.ndarray | None  # bool: the segmentation member's mask, None without a member
    opinions: list[ModelOpinion]


def ensemble_build(manifest: EnsembleManifest, weights: dict[str, str | None] | None = None) -> Ensemble:
    """The members, randomly initialised or from the ImageNet weights given per architecture."""
    weights = weights or {}
    models = {arch: model_build(arch, len(manifest.classes), manifest.annotate.dropout, weights.get(arch))
              for arch in manifest.architectures}
    return Ensemble(manifest=manifest, models=models)


def save_ensemble(ensemble: Ensemble, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for arch, model in ensemble.models.items():
        weights_save(model.state_dict(), folder / f"{arch}.safetensors", ensemble.manifest.weights_dtype)
    if ensemble.segmenter is not None:
        weights_save(ensemble.segmenter.state_dict(), folder / SEGMENTER_NAME, ensemble.manifest.weights_dtype)
    if ensemble.refiner is not None:
        # Always float32: int8 weights cost the demo refiner half a click per mask (docs/engine.md, correcting
        # with clicks), for the 10 MB they save.
        weights_save(ensemble.refiner.state_dict(), folder / REFINER_NAME, "float32")
    manifest_save(ensemble.manifest, folder)
    return folder


def manifest_save(manifest: EnsembleManifest, folder: str | Path) -> None:
    (Path(folder) / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2))


def load_ensemble(folder: str | Path, device: str | None = None) -> Ensemble:
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not an ensemble checkpoint: no {MANIFEST_NAME}")
    manifest = EnsembleManifest.from_dict(json.loads(manifest_path.read_text()))
    ensemble = ensemble_build(manifest)
    for arch, model in ensemble.models.items():
        model.load_state_dict(weights_load(folder / f"{arch}.safetensors"))
        model.eval()
    if manifest.segmenter is not None:
        ensemble.segmenter = SegmentationNet(manifest.segmenter)
        ensemble.segmenter.load_state_dict(weights_load(folder / SEGMENTER_NAME))
        ensemble.segmenter.eval()
    if manifest.refiner is not None:
        ensemble.refiner = refiner_net_load(manifest.refiner, folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return ensemble.to(device)


def annotate(ensemble: Ensemble, images: list[Image.Image], config: AnnotateConfig | None = None,
             batch_size: int = 8, seed: int = 0) -> list[ImageAnnotation]:
    """Diagnose, explain and outline each image; the same call serves the CLI, the worker and the tests."""
    config = config or ensemble.manifest.annotate
    if config.proposal == "segmentation" and ensemble.segmenter is None:
        raise ValueError("the proposal is the segmentation member's, but this ensemble has none")
    results = []
    for start in range(0, len(images), batch_size):
        results += _annotate_batch(ensemble, images[start:start + batch_size], config, seed + start)
    return results


def _annotate_batch(ensemble: Ensemble, images: list[Image.Image], config: AnnotateConfig,
                    seed: int) -> list[ImageAnnotation]:
    manifest = ensemble.manifest
    batch = images_to_tensor(images, manifest).to(ensemble.device)
    generator = torch.Generator(device=ensemble.device).manual_seed(seed)
    # One forward pass per model serves both MC-Dropout and XGrad-CAM; each is held open (its graph spans only the
    # head) until the ensemble mean, which needs every model's samples, has chosen the classes to explain.
    forwards = {arch: BatchedXGradCam(model).forward(batch) for arch, model in ensemble.models.items()}
    samples = {}
    for arch, model in ensemble.models.items():
        with torch.no_grad():
            samples[arch] = mc_dropout_probs(model_classifier(model), forwards[arch].pooled, config.mc_samples,
                                             config.dropout, generator, manifest.temperatures.get(arch, 1.0)).cpu()
    model_means = {arch: s.mean(0) for arch, s in samples.items()}  # (batch, classes)
    ensemble_mean = torch.stack(list(model_means.values())).mean(0)
    diagnoses = ensemble_mean.argmax(-1)
    if config.uncertainty_measure == "mutual_information":
        uncertainty = mutual_information(torch.cat(list(samples.values())))  # all members' samples pooled
    else:
        uncertainty = entropy(ensemble_mean)
    # Heatmaps explain the most likely disease, so a healthy call still shows where a lesion would be sought.
    disease = torch.tensor(manifest.disease_classes)
    cam_classes = disease[ensemble_mean[:, disease].argmax(-1)].tolist()
    heatmaps = {arch: forward.heatmaps(cam_classes).cpu().numpy() for arch, forward in forwards.items()}
    if config.flip_maps:
        mirrored = torch.flip(batch, dims=[-1])
        for arch, model in ensemble.models.items():
            mirror = BatchedXGradCam(model).forward(mirrored).heatmaps(cam_classes).cpu().numpy()[..., ::-1]
            heatmaps[arch] = (heatmaps[arch] + mirror) / 2
    segmented = [None] * len(images)
    if ensemble.segmenter is not None:
        segmented = [probs > manifest.segmenter.threshold for probs in segmenter_probabilities(
            ensemble.segmenter, images, manifest.mean, manifest.std, ensemble.device)]

    results = []
    for i, image in enumerate(images):
        diagnosis = int(diagnoses[i])
        labels = [int(model_means[arch][i].argmax()) for arch in ensemble.models]
        own_size = [_resize_map(heatmaps[arch][i], image.size) for arch in ensemble.models]
        masks = [heatmap_binarize(heatmap, config) for heatmap in own_size]
        opinions = [
            ModelOpinion(
                architecture=arch,
                label=manifest.classes[label],
                agrees=label == diagnosis,
                probabilities=model_means[arch][i].tolist(),
                std=samples[arch][:, i].std(0).tolist(),
                entropy=float(entropy(model_means[arch][i])),
                mutual_information=float(mutual_information(samples[arch][:, i:i + 1])[0]),
                heatmap=heatmap,
                mask=mask,
            )
            for arch, label, heatmap, mask in zip(ensemble.models, labels, own_size, masks)
        ]
        consensus, paper = proposal_mask(np.asarray(image.convert("L")), own_size, masks, labels, diagnosis,
                                         manifest.disease_classes, config)
        segmentation = None
        if segmented[i] is not None:  # a healthy diagnosis proposes no mask, whoever draws it
            segmentation = segmented[i] & (diagnosis in manifest.disease_classes)
        reason = review_flag(list(ensemble.models), labels, diagnosis, float(uncertainty[i]),
                             config.uncertainty_threshold, manifest.classes, config.uncertainty_measure)
        results.append(ImageAnnotation(
            diagnosis=manifest.classes[diagnosis],
            probabilities=ensemble_mean[i].tolist(),
            uncertainty=float(uncertainty[i]),
            flagged=bool(reason),
            flag_reason=reason,
            cam_class=manifest.classes[cam_classes[i]],
            mask=segmentation if config.proposal == "segmentation" else consensus,
            paper_mask=paper,
            consensus_mask=consensus,
            segmentation_mask=segmentation,
            opinions=opinions,
        ))
    return results


def _resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(heatmap.astype(np.float32)).resize(size, Image.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
