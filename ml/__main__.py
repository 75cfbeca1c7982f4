"""Command line: `python -m ml train ...` and `python -m ml annotate ...`."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import DEFAULT_ARCHITECTURES, AnnotateConfig

TASKS = {
    # task name: (classes, healthy class, dataset label -> class)
    "lesion-vs-normal": (("normal", "lesion"), "normal", {"normal": "normal", "benign": "lesion",
                                                          "malignant": "lesion"}),
    "three-class": (("normal", "benign", "malignant"), "normal", {"normal": "normal", "benign": "benign",
                                                                  "malignant": "malignant"}),
}


def _train(args) -> None:
    from ml.train import TrainConfig, ensemble_train

    classes, healthy, mapping = TASKS[args.task]
    root = args.data.parent
    excluded = set()
    if args.exclude:
        with args.exclude.open() as f:
            excluded = {Path(row["filename"]).name for row in csv.DictReader(f)}
    paths, labels = [], []
    with args.data.open() as f:
        for row in csv.DictReader(f):
            if Path(row["filename"]).name in excluded or row["label"] not in mapping:
                continue
            paths.append(root / row["filename"])
            labels.append(classes.index(mapping[row["label"]]))
    print(f"training on {len(paths)} images ({len(excluded)} excluded)", file=sys.stderr)
    config = TrainConfig(architectures=tuple(args.arch), classes=classes, healthy_class=healthy,
                         label_map=tuple(mapping.items()),
                         input_size=args.input_size, epochs=args.epochs, seed=args.seed,
                         weights_dtype=args.weights_dtype, use_hub=not args.no_hub,
                         weights_files=tuple(_weights_pairs(args.weights)))
    ensemble = ensemble_train(paths, labels, config, args.out)
    print(json.dumps(ensemble.manifest.metrics, indent=2))


def _weights_pairs(pairs: list[str]):
    for pair in pairs:
        arch, _, path = pair.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--weights {pair}: expected ARCH=FILE with an existing file")
        yield arch, path


def _annotate(args) -> None:
    from ml.ensemble import annotate, load_ensemble

    ensemble = load_ensemble(args.model)
    config = AnnotateConfig(**{**ensemble.manifest.annotate.__dict__,
                               **({"mc_samples": args.samples} if args.samples else {})})
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        result = annotate(ensemble, [Image.open(path)], config)[0]
        stem = args.out / path.stem
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(f"{stem}_mask.png")
        record = {"image": str(path), "diagnosis": result.diagnosis, "probabilities": result.probabilities,
                  "uncertainty": result.uncertainty, "flagged": result.flagged, "flag_reason": result.flag_reason,
                  "cam_class": result.cam_class, "models": []}
        for opinion in result.opinions:
            Image.fromarray((opinion.heatmap * 255).astype(np.uint8)).save(f"{stem}_cam_{opinion.architecture}.png")
            record["models"].append({k: v for k, v in opinion.__dict__.items() if k != "heatmap"})
        Path(f"{stem}.json").write_text(json.dumps(record, indent=2))
        print(f"{path.name}: {result.diagnosis} uncertainty {result.uncertainty:.2f}"
              f"{' FLAGGED: ' + result.flag_reason if result.flagged else ''}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune the ensemble on image-level labels")
    train.add_argument("--data", type=Path, required=True, help="manifest CSV with filename,label columns")
    train.add_argument("--task", choices=sorted(TASKS), default="lesion-vs-normal")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--arch", nargs=3, default=list(DEFAULT_ARCHITECTURES))
    train.add_argument("--input-size", type=int, default=224)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--exclude", type=Path, help="CSV whose filename column lists images to leave out")
    train.add_argument("--weights-dtype", choices=("float32", "int8"), default="float32")
    train.add_argument("--weights", nargs="*", default=[], metavar="ARCH=FILE",
                       help="local ImageNet weights per architecture, e.g. resnet50=/models/resnet50.safetensors")
    train.add_argument("--no-hub", action="store_true", help="never fetch ImageNet weights from timm's hub")
    train.set_defaults(run=_train)
    annotate = commands.add_parser("annotate", help="annotate images with a trained ensemble")
    annotate.add_argument("--model", type=Path, required=True)
    annotate.add_argument("--out", type=Path, required=True)
    annotate.add_argument("--samples", type=int, help="MC-Dropout passes (default: the manifest's)")
    annotate.add_argument("images", type=Path, nargs="+")
    annotate.set_defaults(run=_annotate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
