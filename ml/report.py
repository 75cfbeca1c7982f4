"""`python -m ml report`: the README's table of what the engine proposes, regenerated from the data set alone.

One command, from a manifest with lesion masks: split it once (by its seed) into training and test images, then per
training seed train the panel on the training images, train the segmentation member beside it with k of their masks
standing in for approved ones (for each k asked for, gated on their held-out share as fine-tuning runs are), and score
everything on the test images, which no step saw; the panel's diagnoses and flags are scored once more after
temperature scaling on its validation share (ml/calibration.py), to show what calibration changes. The table gives
the mean ± standard deviation over the seeds and the training times. Each seed's panel and scores stay in the output
folder, so a rerun (or one with more seeds) trains only what is missing.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ml.calibration import calibrate, validation_images
from ml.config import MEMBER_EPOCHS, TASKS, SegmenterConfig
from ml.curve import labelled_images_read, lesion_overlap, member_masks, segment_fit
from ml.ensemble import load_ensemble
from ml.evaluate import CONSENSUS, ENSEMBLE, PAPER, image_score, metrics_summarize, rows_read
from ml.models import imagenet_weights_resolve
from ml.segment import SegmentTrainConfig
from ml.split import manifest_split
from ml.train import TrainConfig, code_version, ensemble_train, task_rows_read

TASK = "lesion-vs-normal"


@dataclass(frozen=True)
class ReportConfig:
    architectures: tuple[str, ...]
    input_size: int = 224
    epochs: int = 15
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 1
    test_fraction: float = 0.2
    approved: tuple[int, ...] = (0, 100)  # the member is trained once per count of approved masks
    member_epochs: int = MEMBER_EPOCHS
    member_input_size: int = 160
    use_hub: bool = True


def report_run(data: Path, out: Path, config: ReportConfig, progress=print) -> dict:
    """Everything the table needs, written to `out` as report.json and report.md."""
    split = out / "split"
    if not (split / "test.csv").is_file():
        manifest_split(data, split, config.test_fraction, config.split_seed)
    seeds = [seed_result(split, out / f"seed-{seed}", seed, config, progress) for seed in config.seeds]
    for seed in seeds:
        seed["calibrated"] = calibrated_result(split, out / f"seed-{seed['seed']}", seed["seed"], seed["key"], progress)
    for seed in seeds:  # what `train` chose on the seed's validation share, read from its checkpoint
        seed["recipe"] = json.loads((out / f"seed-{seed['seed']}" / "panel" / "manifest.json").read_text())["annotate"]
    report = {"config": asdict(config), "data": str(data), "code_version": code_version(), "seeds": seeds}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report) + "\n")
    return report


def seed_result(split: Path, folder: Path, seed: int, config: ReportConfig, progress) -> dict:
    """One seed's scores on the test images, read back from `folder` when it already holds them for this config."""
    key = json.loads(json.dumps({**asdict(config), "seeds": None, "seed": seed}))  # as read back from the file
    stored = folder / "result.json"
    cached = json.loads(stored.read_text()) if stored.is_file() else None
    if cached is not None and cached["key"] == key:
        progress(f"seed {seed}: scores from {stored}")
        return cached
    panel = folder / "panel"
    if not _panel_matches(panel, config, seed):
        progress(f"seed {seed}: training the panel into {panel}")
        _panel_train(split / "train.csv", panel, config, seed)
    ensemble = load_ensemble(panel)
    manifest = ensemble.manifest
    test, panel_metrics = _test_scores(ensemble, split)
    train = labelled_images_read(ensemble, rows_read(split / "train.csv"), split, None)
    member_config = SegmenterConfig(input_size=config.member_input_size)
    weights = imagenet_weights_resolve([member_config.encoder], {}, config.use_hub)[member_config.encoder]
    members = {}
    for k in config.approved:
        progress(f"seed {seed}: the segmentation member with {k} approved masks")
        fit = segment_fit(ensemble, train, k, "uncertainty", member_config,
                          SegmentTrainConfig(epochs=config.member_epochs, seed=seed), weights)
        member = member_masks(ensemble, ensemble.segmenter, test, list(range(len(test.images))))
        proposal = member if fit["proposal"] == "segmentation" else [a.consensus_mask for a in test.annotations]
        members[str(k)] = {"member": lesion_overlap(member, test.truths),
                           "proposal": lesion_overlap(proposal, test.truths), "gate": fit["proposal"],
                           "seconds": fit["training_seconds"]}
    result = {"key": key, "seed": seed, "panel_seconds": manifest.training["seconds"], "metrics": panel_metrics,
              "members": members}
    stored.write_text(json.dumps(result, indent=2))
    return result


def calibrated_result(split: Path, folder: Path, seed: int, key: dict, progress) -> dict:
    """The seed's panel temperature-scaled on its validation share, and its diagnoses and flags on the test images
    then; read back from `folder` when it already holds them for `key`. The panel on disk stays as trained."""
    stored = folder / "calibrated.json"
    cached = json.loads(stored.read_text()) if stored.is_file() else None
    if cached is not None and cached["key"] == key:
        return cached
    progress(f"seed {seed}: temperature scaling on the validation share")
    ensemble = load_ensemble(folder / "panel")
    images, labels = validation_images(ensemble, split / "train.csv", set())
    before, after = calibrate(ensemble, images, labels, seed)
    result = {"key": key, "validation": {"before": before, "after": after},
              "metrics": _test_scores(ensemble, split)[1][ENSEMBLE]}
    stored.write_text(json.dumps(result, indent=2))
    return result


def _test_scores(ensemble, split: Path):
    """The test images as the ensemble annotates them, and their scores."""
    manifest = ensemble.manifest
    test = labelled_images_read(ensemble, rows_read(split / "test.csv"), split, None)
    scores = [image_score(annotation, manifest.classes.index(label), manifest, truth, [])
              for annotation, label, truth in zip(test.annotations, test.labels, test.truths)]
    return test, metrics_summarize(scores, list(manifest.architectures), manifest.classes.index(manifest.healthy_class))


def _panel_matches(panel: Path, config: ReportConfig, seed: int) -> bool:
    """Whether `panel` holds a checkpoint trained as this config asks for `seed`."""
    if not (panel / "manifest.json").is_file():
        return False
    manifest = json.loads((panel / "manifest.json").read_text())
    trained = manifest.get("training", {}).get("config", {})
    return (manifest["architectures"] == list(config.architectures) and manifest["input_size"] == config.input_size
            and trained.get("epochs") == config.epochs and trained.get("seed") == seed
            and "seconds" in manifest["training"])


def _panel_train(train_csv: Path, panel: Path, config: ReportConfig, seed: int) -> None:
    classes, healthy, mapping = TASKS[TASK]
    paths, labels, masks = task_rows_read(train_csv, TASK)
    ensemble_train(paths, labels, TrainConfig(architectures=config.architectures, classes=classes,
                                              healthy_class=healthy, label_map=tuple(mapping.items()),
                                              input_size=config.input_size, epochs=config.epochs, seed=seed,
                                              use_hub=config.use_hub), panel, masks)


# --- The table ------------------------------------------------------------------------------------------------

DIAGNOSIS_COLUMNS = [("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced acc."), ("auroc", "AUROC"),
                     ("flagged_share", "Flagged"), ("accuracy_unflagged", "Acc. unflagged")]


def spread(values: list[float | None], percent: bool = True) -> str:
    """Mean ± sample standard deviation over the seeds ("–" where a seed had no value)."""
    if any(value is None for value in values) or not values:
        return "–"
    scale, unit = (100, " %") if percent else (1, "")
    mean = scale * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}{unit}" if percent else f"{mean:.3f}"
    std = scale * float(np.std(values, ddof=1))
    return f"{mean:.1f} ± {std:.1f}{unit}" if percent else f"{mean:.3f} ± {std:.3f}"


def report_markdown(report: dict) -> str:
    seeds = report["seeds"]
    config = report["config"]
    first = seeds[0]["metrics"]
    architectures = list(first["models"])
    lines = ["| Diagnosis | " + " | ".join(header for _, header in DIAGNOSIS_COLUMNS) + " |",
             "|---|" + "---:|" * len(DIAGNOSIS_COLUMNS)]
    diagnosis_rows = {"the panel": [s["metrics"][ENSEMBLE] for s in seeds],
                      "the panel, temperature-scaled": [s["calibrated"]["metrics"] for s in seeds],
                      **{name: [s["metrics"]["models"][name] for s in seeds] for name in architectures}}
    for name, rows in diagnosis_rows.items():
        cells = [spread([row.get(key) for row in rows], percent=key != "auroc") if key in rows[0] else ""
                 for key, _ in DIAGNOSIS_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| Mask on the test lesions | IoU | Dice |", "|---|---:|---:|"]
    for name in architectures:
        lines.append(_mask_row(f"{name}'s own XGrad-CAM", [s["metrics"]["models"][name] for s in seeds]))
    lines.append(_mask_row("the paper's intersection", [s["metrics"][PAPER] for s in seeds]))
    lines.append(_mask_row("the panel's consensus, by the chosen recipe", [s["metrics"][CONSENSUS] for s in seeds]))
    for k in map(str, config["approved"]):
        members = [s["members"][k] for s in seeds]
        chosen = sum(m["gate"] == "segmentation" for m in members)
        lines.append(f"| segmentation member, {k} approved masks | {spread([m['member'][0] for m in members])} | "
                     f"{spread([m['member'][1] for m in members])} |")
        lines.append(f"| **proposal** with {k} approved masks (the gate chose the member {chosen} of "
                     f"{len(members)}) | {spread([m['proposal'][0] for m in members])} | "
                     f"{spread([m['proposal'][1] for m in members])} |")
    counts = first["counts"]
    member_seconds = [m["seconds"] for s in seeds for m in s["members"].values()]
    lines += ["", f"{counts['images']} test images ({counts['images_with_mask']} with a lesion), split seed "
                  f"{config['split_seed']}; mean ± standard deviation over training seeds "
                  f"{[s['seed'] for s in seeds]}. Panel: {', '.join(architectures)} at {config['input_size']} px, "
                  f"{config['epochs']} epochs at most; training took {_minutes([s['panel_seconds'] for s in seeds])} "
                  f"per seed, each segmentation member {_minutes(member_seconds)} ({config['member_epochs']} epochs "
                  f"at {config['member_input_size']} px). IoU and Dice are means over the lesion images; a healthy "
                  f"diagnosis proposes nothing there and scores 0. Code {report['code_version']}.", "",
              "Chosen on each seed's validation share: " + "; ".join(
                  f"seed {s['seed']}: {_recipe(s['recipe'])}" for s in seeds) + ".", "",
              "Temperature-scaled: one temperature for the panel fitted on the seed's validation share, and the "
              "flag threshold chosen again there: " + "; ".join(
                  f"seed {s['seed']}: T = {_temperature(s['calibrated'])}, flagged above "
                  f"{s['calibrated']['validation']['after']['uncertainty_threshold']:g}" for s in seeds) + "."]
    return "\n".join(lines)


def _recipe(annotate: dict) -> str:
    binarize = {"fraction": f"{annotate['binarize_fraction']} of the maximum", "otsu": "Otsu",
                "percentile": f"{annotate['binarize_percentile']:g}th percentile"}[annotate["binarize"]]
    return (f"{binarize}, {annotate['consensus']}, refinement {annotate['refine']}, flagged above "
            f"{annotate['uncertainty_measure']} {annotate['uncertainty_threshold']:g}")


def _temperature(calibrated: dict) -> str:
    return f"{next(iter(calibrated['validation']['after']['temperatures'].values())):g}"


def _mask_row(name: str, rows: list[dict]) -> str:
    return f"| {name} | {spread([r['iou'] for r in rows])} | {spread([r['dice'] for r in rows])} |"


def _minutes(seconds: list[float]) -> str:
    return f"{np.mean(seconds) / 60:.0f} min" if np.mean(seconds) >= 60 else f"{np.mean(seconds):.0f} s"


def report_command(args) -> None:
    """`python -m ml report`, its flags parsed by ml.__main__."""
    config = ReportConfig(architectures=tuple(args.arch), input_size=args.input_size, epochs=args.epochs,
                          seeds=tuple(args.seeds), split_seed=args.split_seed, approved=tuple(args.approved),
                          member_epochs=args.member_epochs, use_hub=not args.no_hub)
    started = time.monotonic()
    report = report_run(args.data, args.out, config, progress=lambda line: print(line, flush=True))
    print(report_markdown(report))
    print(f"written to {args.out / 'report.md'} in {(time.monotonic() - started) / 60:.0f} min")
