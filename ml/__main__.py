"""Command line: `python -m ml split | train | tune | segment | learning-curve | refiner | clicks | annotate |
evaluate | calibrate | report | bench` (each with --help)."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import DEFAULT_ARCHITECTURES, MEMBER_EPOCHS, TASKS


def _excluded_names(exclude: Path | None) -> set[str]:
    """The file names listed in the `filename` column of the --exclude CSV."""
    if not exclude:
        return set()
    with exclude.open() as f:
        return {Path(row["filename"]).name for row in csv.DictReader(f)}


def _train(args) -> None:
    from ml.train import TrainConfig, ensemble_train, task_rows_read, training_table

    classes, healthy, mapping = TASKS[args.task]
    excluded = _excluded_names(args.exclude)
    paths, labels, masks = task_rows_read(args.data, args.task, excluded)
    print(f"training on {len(paths)} images ({len(excluded)} excluded)", file=sys.stderr)
    config = TrainConfig(architectures=tuple(args.arch), classes=classes, healthy_class=healthy,
                         label_map=tuple(mapping.items()),
                         input_size=args.input_size, epochs=args.epochs, seed=args.seed,
                         weights_dtype=args.weights_dtype, use_hub=not args.no_hub,
                         weights_files=tuple(_weights_pairs(args.weights)), variance_weight=args.variance_weight,
                         calibrate=args.calibrate)
    ensemble = ensemble_train(paths, labels, config, args.out, masks)
    print(training_table(ensemble.manifest.metrics))
    print(f"checkpoint written to {args.out}")


def _weights_pairs(pairs: list[str]):
    for pair in pairs:
        arch, _, path = pair.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--weights {pair}: expected ARCH=FILE with an existing file")
        yield arch, path


def _split(args) -> None:
    """A held-out test split that no training run sees, with near-duplicates kept on one side."""
    from ml.split import manifest_split

    train, test, groups = manifest_split(args.data, args.out, args.test_fraction, args.seed)
    print(f"{train} training and {test} test images ({groups} near-duplicate groups) written to {args.out}")


ANNOTATE_BATCH = 8  # images per ensemble pass: the batched path is several times faster than one by one


def _annotate(args) -> None:
    from dataclasses import replace

    from ml.ensemble import annotate, load_ensemble

    ensemble = load_ensemble(args.model)
    config = ensemble.manifest.annotate
    if args.samples:
        config = replace(config, mc_samples=args.samples)
    args.out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(args.images), ANNOTATE_BATCH):
        paths = args.images[start:start + ANNOTATE_BATCH]
        pictures = [Image.open(path) for path in paths]
        for path, picture, result in zip(paths, pictures, annotate(ensemble, pictures, config, seed=start)):
            _annotation_write(args.out / path.stem, path, picture, result)


def _annotation_write(stem: Path, path: Path, picture, result) -> None:
    """The mask, an overlay for people, each model's heatmap, and a JSON record of one image."""
    from ml.overlay import overlay_render

    Image.fromarray(result.mask.astype(np.uint8) * 255).save(f"{stem}_mask.png")
    mean_heatmap = np.mean([opinion.heatmap for opinion in result.opinions], axis=0)
    overlay_render(picture, mean_heatmap, result.mask).save(f"{stem}_overlay.png")
    record = {"image": str(path), "diagnosis": result.diagnosis, "probabilities": result.probabilities,
              "uncertainty": result.uncertainty, "flagged": result.flagged, "flag_reason": result.flag_reason,
              "cam_class": result.cam_class, "mask_pixels": int(result.mask.sum()),
              "agreement": sum(o.agrees for o in result.opinions) / len(result.opinions), "models": []}
    for opinion in result.opinions:
        Image.fromarray((opinion.heatmap * 255).astype(np.uint8)).save(f"{stem}_cam_{opinion.architecture}.png")
        record["models"].append({k: v for k, v in opinion.__dict__.items() if k not in ("heatmap", "mask")})
    Path(f"{stem}.json").write_text(json.dumps(record, indent=2))
    print(f"{path.name}: {result.diagnosis} uncertainty {result.uncertainty:.2f}"
          f"{' FLAGGED: ' + result.flag_reason if result.flagged else ''}")


# bench, evaluate and tune import torch: their parsers live here, their modules load only when the command runs.


def _bench(args) -> None:
    from ml.bench import bench_command

    bench_command(args)


def _bench_register(commands) -> None:
    bench = commands.add_parser("bench", help="time annotate() against a naive baseline and the floor")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--input-size", type=int, help="default: the checkpoint's, else 224")
    bench.add_argument("--samples", type=int, default=20, help="T, the MC-Dropout passes")
    bench.add_argument("--images", type=int, default=16)
    bench.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    bench.add_argument("--model", type=Path, help="a trained ensemble (default: random weights, default panel)")
    bench.set_defaults(run=_bench)


def _evaluate(args) -> None:
    from ml.evaluate import evaluate_command

    evaluate_command(args)


def _exclude_argument(parser) -> None:
    parser.add_argument("--exclude", type=Path, help="CSV whose filename column lists images to leave out")


def _labelled_data_arguments(parser, data_help: str) -> None:
    """The flags of the commands that annotate a labelled data set with masks and score it: evaluate and tune."""
    parser.add_argument("--model", type=Path, required=True, help="ensemble checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help=data_help)
    parser.add_argument("--masks", type=Path, help="ground-truth masks by the image's file name, where no mask_path")
    parser.add_argument("--limit", type=int, help="this many rows, spread evenly over the manifest")
    parser.add_argument("--batch-size", type=int, default=8)


def _evaluate_register(commands) -> None:
    parser = commands.add_parser("evaluate", help="accuracy, calibration, flags and mask overlap on labelled data")
    _labelled_data_arguments(parser, "manifest CSV: filename,label[,mask_path], paths relative to its folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json, metrics.md and plots")
    parser.add_argument("--boxes", type=Path, help="boxes CSV (filename,box_class,x1,y1,x2,y2): pointing, box IoU")
    parser.add_argument("--samples", type=int, help="MC-Dropout passes (default: the manifest's)")
    parser.set_defaults(run=_evaluate)


def _tune(args) -> None:
    from ml.tune import tune_command

    args.excluded = _excluded_names(args.exclude)
    tune_command(args)


def _tune_register(commands) -> None:
    parser = commands.add_parser("tune", help="choose binarisation, consensus rule and refinement on lesion masks")
    _labelled_data_arguments(parser, "manifest CSV: filename,label[,mask_path]; not the test split")
    _exclude_argument(parser)
    parser.add_argument("--write", action="store_true", help="write the choice into the checkpoint's manifest.json")
    parser.set_defaults(run=_tune)


def _calibrate(args) -> None:
    from ml.calibration import calibrate_command

    args.excluded = _excluded_names(args.exclude)
    calibrate_command(args)


def _calibrate_register(commands) -> None:
    parser = commands.add_parser("calibrate", help="temperature-scale a checkpoint's panel on its validation split")
    parser.add_argument("--model", type=Path, required=True, help="ensemble checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help="the manifest CSV `ml train` was given")
    _exclude_argument(parser)
    parser.add_argument("--write", action="store_true",
                        help="write the temperatures and the flag threshold chosen with them into --model")
    parser.set_defaults(run=_calibrate)


def _segment(args) -> None:
    from ml.curve import segment_command

    args.excluded = _excluded_names(args.exclude)
    segment_command(args)


def _learning_curve(args) -> None:
    from ml.curve import learning_curve_command

    args.excluded = _excluded_names(args.exclude)
    learning_curve_command(args)


def _member_arguments(parser) -> None:
    """The flags of the commands that train the segmentation member."""
    _exclude_argument(parser)
    parser.add_argument("--encoder", default="efficientnet_lite0", help="the member's timm encoder")
    parser.add_argument("--input-size", type=int, default=160, help="a multiple of 32")
    parser.add_argument("--epochs", type=int, default=MEMBER_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-encoder-batchnorm", action="store_true",
                        help="re-estimate the encoder's BatchNorm statistics while training (default: keep them)")
    parser.add_argument("--pseudo-masks-beside-approved", action="store_true",
                        help="lesion images without an approved mask teach the panel's pseudo-mask even once masks "
                             "are approved (default: only while none is)")
    parser.add_argument("--no-hub", action="store_true", help="never fetch ImageNet weights from timm's hub")


def _counts(text: str) -> list[int | None]:
    """"0,25,all" -> [0, 25, None]: None stands for every mask there is."""
    return [None if part == "all" else int(part) for part in text.split(",")]


def _segment_register(commands) -> None:
    parser = commands.add_parser("segment", help="train the segmentation member beside an ensemble, gate it, write it")
    _labelled_data_arguments(parser, "manifest CSV: filename,label[,mask_path]; not the test split")
    _member_arguments(parser)
    parser.add_argument("--approved", type=int, default=0,
                        help="this many ground-truth masks stand in for approved ones (the rest: pseudo-masks)")
    parser.add_argument("--order", choices=("uncertainty", "random"), default="uncertainty",
                        help="which masks count as approved: the review queue's order, or random")
    parser.add_argument("--write", action="store_true", help="write the member and the gate's choice into --model")
    parser.set_defaults(run=_segment)


def _learning_curve_register(commands) -> None:
    parser = commands.add_parser("learning-curve", help="the member's mask IoU on a test set per approved masks")
    _labelled_data_arguments(parser, "training manifest CSV: filename,label[,mask_path]")
    _member_arguments(parser)
    parser.add_argument("--test", type=Path, required=True, help="test manifest CSV that no training saw")
    parser.add_argument("--test-masks", type=Path, help="the test set's masks by file name, where no mask_path")
    parser.add_argument("--ks", type=_counts, default=_counts("0,25,50,100,200,all"),
                        help="approved-mask counts, comma-separated; all: every mask")
    parser.add_argument("--orders", type=lambda text: text.split(","), default=["uncertainty", "random"],
                        help="uncertainty (the review queue's order), random, or both")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.set_defaults(run=_learning_curve)


def _report(args) -> None:
    from ml.report import report_command

    report_command(args)


def _report_register(commands) -> None:
    parser = commands.add_parser("report", help="split, train over seeds, score on the test split: the README's table")
    parser.add_argument("--data", type=Path, required=True, help="manifest CSV: filename,label,mask_path (BUSI's)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the split, each seed's panel, the report")
    parser.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHITECTURES), help="the panel's members")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=15, help="of the panel (early stopping may end sooner)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=1, help="of the training/test split")
    parser.add_argument("--approved", type=lambda text: [int(s) for s in text.split(",")], default=[0, 100],
                        help="approved-mask counts the segmentation member is trained with, comma-separated")
    parser.add_argument("--member-epochs", type=int, default=MEMBER_EPOCHS)
    parser.add_argument("--no-hub", action="store_true", help="never fetch ImageNet weights from timm's hub")
    parser.set_defaults(run=_report)


def _clicks(args) -> None:
    from ml.click_commands import clicks_command

    args.excluded = _excluded_names(args.exclude)
    clicks_command(args)


def _refiner(args) -> None:
    from ml.click_commands import refiner_command

    args.excluded = _excluded_names(args.exclude)
    refiner_command(args)


def _clicks_register(commands) -> None:
    parser = commands.add_parser("clicks", help="the simulated radiologist: clicks to correct proposals, per method")
    _labelled_data_arguments(parser, "manifest CSV: filename,label[,mask_path] of images with lesion masks")
    parser.add_argument("--target-iou", type=float, default=0.85, help="NoC counts the clicks to reach this IoU")
    parser.add_argument("--max-clicks", type=int, default=20, help="a correction that never gets there counts this")
    _exclude_argument(parser)
    parser.add_argument("--held-out", action="store_true",
                        help="only the images `ml refiner` and fine-tuning runs hold out to judge a refiner")
    parser.set_defaults(run=_clicks)


def _refiner_register(commands) -> None:
    parser = commands.add_parser("refiner", help="train the click refiner on lesion masks, judge it, write it")
    _labelled_data_arguments(parser, "manifest CSV: filename,label[,mask_path]; not the test split")
    _exclude_argument(parser)
    parser.add_argument("--encoder", default="efficientnet_lite0",
                        help="the encoder where the checkpoint has no segmentation member to start from")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=None,
                        help="the crop's side at the network's input, a multiple of 32 (default: the member's)")
    parser.add_argument("--max-clicks", type=int, default=20, help="of the held-out judgement")
    parser.add_argument("--train-encoder-batchnorm", action="store_true",
                        help="re-estimate the encoder's BatchNorm statistics while training (default: keep them)")
    parser.add_argument("--no-hub", action="store_true", help="never fetch ImageNet weights from timm's hub")
    parser.add_argument("--write", action="store_true", help="write the refiner into --model if it beats GrabCut")
    parser.set_defaults(run=_refiner)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune the ensemble on image-level labels")
    train.add_argument("--data", type=Path, required=True, help="manifest CSV with filename,label columns")
    train.add_argument("--task", choices=sorted(TASKS), default="lesion-vs-normal")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHITECTURES),
                       help="timm architectures of the members, e.g. resnet50 efficientnet_lite0 densenet121")
    train.add_argument("--variance-weight", type=float, default=0.0,
                       help="λ of the paper's extra loss term: variance of the MC-Dropout passes (0: off)")
    train.add_argument("--input-size", type=int, default=224)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--calibrate", action="store_true",
                       help="temperature-scale the panel on the validation split before choosing the flag threshold")
    _exclude_argument(train)
    train.add_argument("--weights-dtype", choices=("float32", "int8"), default="float32")
    train.add_argument("--weights", nargs="*", default=[], metavar="ARCH=FILE",
                       help="local ImageNet weights per architecture, e.g. resnet50=/models/resnet50.safetensors")
    train.add_argument("--no-hub", action="store_true", help="never fetch ImageNet weights from timm's hub")
    train.set_defaults(run=_train)
    split = commands.add_parser("split", help="split a manifest into train.csv and a held-out test.csv")
    split.add_argument("--data", type=Path, required=True)
    split.add_argument("--out", type=Path, required=True)
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--seed", type=int, default=1)
    split.set_defaults(run=_split)
    annotate = commands.add_parser("annotate", help="annotate images with a trained ensemble")
    annotate.add_argument("--model", type=Path, required=True)
    annotate.add_argument("--out", type=Path, required=True)
    annotate.add_argument("--samples", type=int, help="MC-Dropout passes (default: the manifest's)")
    annotate.add_argument("images", type=Path, nargs="+")
    annotate.set_defaults(run=_annotate)
    _bench_register(commands)
    _evaluate_register(commands)
    _tune_register(commands)
    _calibrate_register(commands)
    _segment_register(commands)
    _learning_curve_register(commands)
    _refiner_register(commands)
    _clicks_register(commands)
    _report_register(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
