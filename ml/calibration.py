"""Temperature scaling of a trained panel on its validation split, and `python -m ml calibrate` for a checkpoint
trained without it.

Training calibrates when its config says so (TrainConfig.calibrate); the command does the same afterwards: it
finds the checkpoint's validation images again (the split is a function of the data, the seed and the duplicate
distance, all in the manifest), fits the temperature, chooses the flag threshold again on the calibrated
uncertainty, and prints both before and after.
"""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from ml.config import AnnotateConfig
from ml.data import images_to_tensor
from ml.defaults import UNFLAGGED_ACCURACY, flag_threshold_choose
from ml.ensemble import Ensemble, annotate, load_ensemble, manifest_save
from ml.metrics import expected_calibration_error
from ml.models import model_classifier
from ml.split import DUPLICATE_DISTANCE, data_hash, validation_split
from ml.uncertainty import mc_dropout_logits, temperature_fit

BATCH = 16  # images per forward pass: the whole validation split at once would hold every activation


def ensemble_temperatures(ensemble: Ensemble, batch: torch.Tensor, labels: torch.Tensor, config: AnnotateConfig,
                          seed: int = 0) -> dict[str, float]:
    """One temperature for every member, fitted on these (normalised) images to the ensemble's mean over as many
    dropout passes as annotation makes: the mean is what diagnoses and what the flags read. Members fitted one by
    one each learn to soften their own overconfidence, and their mean, already softer than each, ends up less sure
    than it is right (docs/engine.md)."""
    generator = torch.Generator(device=ensemble.device).manual_seed(seed)
    logits = []
    for model in ensemble.models.values():
        model.eval()
        with torch.no_grad():
            pooled = torch.cat([model.forward_head(model.forward_features(batch[s:s + BATCH].to(ensemble.device)),
                                                   pre_logits=True) for s in range(0, len(batch), BATCH)])
            logits.append(mc_dropout_logits(model_classifier(model), pooled, config.mc_samples, config.dropout,
                                            generator).cpu())
    temperature = temperature_fit(torch.cat(logits), labels)
    return {arch: temperature for arch in ensemble.models}


def validation_images(ensemble: Ensemble, data: Path, excluded: set[str]) -> tuple[list[Image.Image], list[int]]:
    """The checkpoint's validation images and their class indices, found again from the CSV it was trained on."""
    manifest = ensemble.manifest
    trained = manifest.training
    if not trained.get("data_sha256"):
        raise ValueError("this checkpoint does not record the data it was trained on")
    paths, labels = [], []
    with data.open() as f:
        for row in csv.DictReader(f):
            label = manifest.label_map.get(row["label"], row["label"])
            if Path(row["filename"]).name in excluded or label not in manifest.classes:
                continue
            paths.append(data.parent / row["filename"])
            labels.append(manifest.classes.index(label))
    if data_hash(paths, labels) != trained["data_sha256"]:
        raise ValueError(f"{data} (less --exclude) is not the data this checkpoint was trained on")
    config = trained.get("config", {})
    originals = [Image.open(path) for path in paths]
    _, val_idx, _ = validation_split(originals, labels, config.get("val_fraction", 0.2), config.get("seed", 0),
                                     config.get("duplicate_distance", DUPLICATE_DISTANCE))
    return [originals[i] for i in val_idx], [labels[i] for i in val_idx]


def calibration_report(ensemble: Ensemble, images: list[Image.Image], labels: list[int],
                       target_accuracy: float = UNFLAGGED_ACCURACY) -> dict:
    """The flag threshold these images support under the ensemble's current temperatures, with the share it flags,
    the accuracy of the rest, and the ensemble's negative log-likelihood and calibration error on them."""
    manifest = ensemble.manifest
    results = annotate(ensemble, images, manifest.annotate)
    flags = flag_threshold_choose(results, [manifest.classes[label] for label in labels], target_accuracy)
    probabilities = torch.tensor([r.probabilities for r in results])
    truth = torch.tensor(labels)
    correct = (probabilities.argmax(-1) == truth).numpy()
    nll = float(-torch.log(probabilities[torch.arange(len(labels)), truth].clamp_min(1e-12)).mean())
    return {**flags, "temperatures": dict(manifest.temperatures), "nll": round(nll, 4),
            "ece": round(expected_calibration_error(probabilities.max(-1).values.numpy(), correct), 4)}


def calibrate(ensemble: Ensemble, images: list[Image.Image], labels: list[int], seed: int = 0) -> tuple[dict, dict]:
    """Fit the temperatures on these images and choose the flag threshold again: the reports before and after. The
    ensemble's manifest holds the new temperatures and threshold afterwards."""
    manifest = ensemble.manifest
    before = calibration_report(ensemble, images, labels)
    manifest.temperatures = ensemble_temperatures(ensemble, images_to_tensor(images, manifest), torch.tensor(labels),
                                                  manifest.annotate, seed)
    after = calibration_report(ensemble, images, labels)
    manifest.annotate = replace(manifest.annotate, uncertainty_threshold=after["uncertainty_threshold"])
    return before, after


def calibration_table(before: dict, after: dict) -> str:
    rows = [f"{'':<22} {'temperatures':<36} {'NLL':>7} {'ECE':>7} {'threshold':>10} {'flagged':>8} "
            f"{'unflagged right':>16}"]
    for name, report in (("as trained", before), ("temperature-scaled", after)):
        temperatures = ", ".join(f"{t:g}" for t in report["temperatures"].values()) or "1 (none)"
        unflagged = "–" if report["accuracy_unflagged"] is None else f"{100 * report['accuracy_unflagged']:.1f} %"
        rows.append(f"{name:<22} {temperatures:<36} {report['nll']:>7.4f} {report['ece']:>7.4f} "
                    f"{report['uncertainty_threshold']:>10g} {100 * report['flagged_share']:>7.1f}% {unflagged:>16}")
    return "\n".join(rows)


def calibrate_command(args) -> None:
    """`python -m ml calibrate`, its flags parsed by ml.__main__."""
    ensemble = load_ensemble(args.model)
    try:
        images, labels = validation_images(ensemble, args.data, args.excluded)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    seed = ensemble.manifest.training.get("config", {}).get("seed", 0)
    before, after = calibrate(ensemble, images, labels, seed)
    print(f"on the checkpoint's {len(images)} validation images:")
    print(calibration_table(before, after))
    if args.write:
        ensemble.manifest.metrics["calibration"] = {"before": before, "after": after}
        manifest_save(ensemble.manifest, args.model)
        print(f"written into {args.model / 'manifest.json'}: temperatures {after['temperatures']}, uncertainty "
              f"threshold {after['uncertainty_threshold']:g}")
