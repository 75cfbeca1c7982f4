"""`python -m ml tune`: choose how an ensemble's heatmaps become the proposed mask (binarisation, consensus rule,
refinement) on images with ground-truth lesion masks, and the flag threshold that keeps unflagged images right 97 %
of the time, and write the choice into its manifest.

Choose on images the evaluation will not see, e.g. the training split: the ensemble learned from image labels only,
so its training images' masks are still unseen ground truth, while the test split stays untouched.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ml.defaults import flag_threshold_choose, mask_recipe_choose, recipe_fields, scored_images
from ml.ensemble import annotate, load_ensemble, manifest_save
from ml.evaluate import image_read, label_classes, mask_read, rows_read, truth_mask_path

# Mirrored maps double the CAM passes: they are chosen only when they beat plain maps by at least this much IoU.
FLIP_MIN_GAIN = 0.01

def tune(ensemble, rows: list[dict], root: Path, masks_dir: Path | None = None, batch_size: int = 8):
    """The chosen annotation config and its report (see defaults.mask_recipe_choose), the images annotated with
    plain and with mirror-averaged heatmaps (chosen only for a gain of FLIP_MIN_GAIN); None without a lesion image
    that the ensemble diagnoses as diseased."""
    manifest = ensemble.manifest
    label_classes(manifest, [row["label"] for row in rows])  # every label must map to a class
    images = [image_read(root / row["filename"]) for row in rows]
    truths = [mask_read(path) if (path := truth_mask_path(row, root, masks_dir)) else None for row in rows]
    choices = []
    for flip_maps in (False, True):
        config = replace(manifest.annotate, flip_maps=flip_maps)
        results = annotate(ensemble, images, config, batch_size=batch_size)
        if not flip_maps:  # the maps do not change a diagnosis, so one pass decides the flags
            flags = flag_threshold_choose(results, [manifest.class_of(row["label"]) for row in rows])
        scored = scored_images(results, images, truths, manifest.classes, manifest.disease_classes)
        choices.append(mask_recipe_choose(scored, manifest.disease_classes, config))
    if None in choices:
        return None
    plain, mirrored = choices
    gain = mirrored[1]["proposal_iou"] - plain[1]["proposal_iou"]
    best, report = mirrored if gain >= FLIP_MIN_GAIN else plain
    best = replace(best, uncertainty_threshold=flags["uncertainty_threshold"])
    candidates = [row for _, each in choices for row in each["candidates"]]
    return best, {**report, "flags": flags,
                  "candidates": sorted(candidates, key=lambda row: row["proposal_iou"], reverse=True)}


def recipe_table(report: dict) -> str:
    """The best recipe of each refinement, with plain and with mirrored maps, best first; the paper's intersection
    (with the chosen binarisation) below them, and the choice."""
    lines = ["| Refinement | Mirrored maps | Binarisation | Consensus | Mean IoU |", "|---|---|---|---|---:|"]
    best_by_method = {}
    for row in report["candidates"]:  # best first
        best_by_method.setdefault((row["refine"], row["flip_maps"]), row)
    for row in best_by_method.values():
        lines.append(f"| {row['refine']} | {_yes_no(row['flip_maps'])} | {_binarisation(row)} | {row['consensus']} | "
                     f"{100 * row['proposal_iou']:.2f} % |")
    lines.append(f"| none (the paper's) | {_yes_no(report['flip_maps'])} | {_binarisation(report)} | intersection | "
                 f"{100 * report['paper_iou']:.2f} % |")
    lines += ["", f"Chosen: {_binarisation(report)}, {report['consensus']}, refinement {report['refine']}, mirrored "
                  f"maps {_yes_no(report['flip_maps'])}; mean IoU "
                  f"over {report['images']} lesion images diagnosed as diseased, of {len(report['candidates'])} "
                  f"recipes tried."]
    flags = report["flags"]
    unflagged = "–" if flags["accuracy_unflagged"] is None else f"{100 * flags['accuracy_unflagged']:.1f} %"
    lines += ["", f"Flag threshold: uncertainty above {flags['uncertainty_threshold']:g} (or a dissenting model) flags "
                  f"{100 * flags['flagged_share']:.1f} % of the {flags['images']} images; the unflagged ones are right "
                  f"{unflagged} of the time (target {100 * flags['target_accuracy']:g} %)."]
    return "\n".join(lines)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _binarisation(fields: dict) -> str:
    if fields["binarize"] == "fraction":
        return f"{fields['binarize_fraction']:g} of the maximum"
    if fields["binarize"] == "percentile":
        return f"above the {fields['binarize_percentile']:g}th percentile"
    return "Otsu"


def tune_command(args) -> None:
    """`python -m ml tune`, its flags parsed by ml.__main__."""
    ensemble = load_ensemble(args.model)
    rows = [row for row in rows_read(args.data, args.limit) if Path(row["filename"]).name not in args.excluded]
    choice = tune(ensemble, rows, args.data.parent, args.masks, args.batch_size)
    if choice is None:
        raise SystemExit("error: no image with a lesion mask was diagnosed as diseased; nothing to choose on")
    config, report = choice
    print(recipe_table(report))
    if args.write:
        ensemble.manifest.annotate = config
        ensemble.manifest.metrics["mask_recipe"] = {key: value for key, value in report.items()
                                                    if key not in ("candidates", "flags")}
        ensemble.manifest.metrics["flags"] = report["flags"]
        ensemble.manifest.metrics["mask_recipe"]["data"] = str(args.data)
        manifest_save(ensemble.manifest, args.model)
        print(f"written into {args.model / 'manifest.json'}: {recipe_fields(config)}, uncertainty threshold "
              f"{config.uncertainty_threshold:g}")
