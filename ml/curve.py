"""`python -m ml segment` and `python -m ml learning-curve`: training the segmentation member beside a panel, and
what approved masks are worth to it.

Ground-truth masks stand in for the radiologists' approvals. `segment` trains the member on a labelled set (pseudo-
masks, plus k approved masks), gates it on the set's held-out share (by content hash, as fine-tuning runs hold images
out) and writes it into the checkpoint. `learning-curve` trains it for each k, with the k approvals taken in the review
queue's order (flagged first, most uncertain first) and at random, and scores every member on a test set that no
training saw, beside the panel's own proposal and the paper's intersection.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import SegmenterConfig
from ml.ensemble import annotate, load_ensemble, save_ensemble
from ml.evaluate import image_read, label_classes, mask_read, rows_read, truth_mask_path
from ml.metrics import mask_dice, mask_iou
from ml.models import imagenet_weights_resolve
from ml.segment import (SegmentTrainConfig, proposal_source_choose, segment_targets, segmenter_build,
                        segmenter_probabilities, segmenter_train)

ORDERS = ("uncertainty", "random")  # the review queue's order, and a random one as the control
HELD_OUT_PERCENT = 20


@dataclass
class LabelledImages:
    """Images with their class names and ground-truth masks (empty for healthy ones, None where unknown), and the
    panel's annotation of each."""

    names: list[str]
    images: list[Image.Image]
    labels: list[str]
    truths: list[np.ndarray | None]
    annotations: list
    keys: list[str]  # SHA-256 of each file, which decides the held-out share

    def held_out_split(self) -> tuple[list[int], list[int]]:
        """The indices of the held-out images (HELD_OUT_PERCENT of them, by content hash, as fine-tuning runs hold
        out theirs) and of the rest."""
        from ml.finetune import held_out

        inside = [held_out(key, HELD_OUT_PERCENT) for key in self.keys]
        return [i for i, h in enumerate(inside) if h], [i for i, h in enumerate(inside) if not h]


def labelled_images_read(ensemble, rows: list[dict], root: Path, masks_dir: Path | None,
                         batch_size: int = 8) -> LabelledImages:
    """The rows' images, read and annotated by the panel once."""
    manifest = ensemble.manifest
    label_classes(manifest, [row["label"] for row in rows])  # every label must map to a class
    paths = [root / row["filename"] for row in rows]
    images = [image_read(path) for path in paths]
    truths = [mask_read(path) if (path := truth_mask_path(row, root, masks_dir)) else None for row in rows]
    return LabelledImages(names=[Path(row["filename"]).name for row in rows], images=images,
                          labels=[manifest.class_of(row["label"]) for row in rows], truths=truths,
                          annotations=annotate(ensemble, images, batch_size=batch_size),
                          keys=[hashlib.sha256(path.read_bytes()).hexdigest() for path in paths])


def approval_order(annotations, order: str, seed: int) -> list[int]:
    """The images' indices in the order radiologists would approve them: the review queue's (flagged first, then the
    most uncertain), or shuffled by `seed`."""
    indices = list(range(len(annotations)))
    if order == "random":
        random.Random(seed).shuffle(indices)
        return indices
    return sorted(indices, key=lambda i: (not annotations[i].flagged, -annotations[i].uncertainty, i))


def member_train(ensemble, data: LabelledImages, indices: list[int], approved: list[int], config: SegmenterConfig,
                 train_config: SegmentTrainConfig, weights: str | None):
    """A member trained on `indices` of `data`: the truth for the `approved` ones among them, and pseudo-masks where
    `segment_targets` takes them."""
    manifest = ensemble.manifest
    approved = set(approved)
    net = segmenter_build(config, weights, train_config.seed)
    targets = segment_targets([data.images[i] for i in indices], [data.labels[i] for i in indices],
                              [data.annotations[i] for i in indices],
                              {j: data.truths[i] for j, i in enumerate(indices) if i in approved},
                              manifest.healthy_class, train_config.approved_weight,
                              train_config.pseudo_masks_beside_approved)
    losses = segmenter_train(net, targets, train_config, manifest.mean, manifest.std, ensemble.device)
    return net, len(targets), losses


def member_masks(ensemble, net, data: LabelledImages, indices: list[int]) -> list[np.ndarray]:
    """The member's masks as the app would propose them: empty where the panel's diagnosis is healthy."""
    manifest = ensemble.manifest
    probabilities = segmenter_probabilities(net, [data.images[i] for i in indices], manifest.mean, manifest.std,
                                            ensemble.device)
    return [(p > net.config.threshold) & (data.annotations[i].diagnosis != manifest.healthy_class)
            for p, i in zip(probabilities, indices)]


def lesion_overlap(masks: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """Mean IoU and Dice over the images whose truth outlines a lesion (a healthy diagnosis scores 0 there)."""
    pairs = [(m, t) for m, t in zip(masks, truths) if t is not None and t.any()]
    return (float(np.mean([mask_iou(m, t) for m, t in pairs])), float(np.mean([mask_dice(m, t) for m, t in pairs])))


def segment_fit(ensemble, data: LabelledImages, approved_count: int, order: str, config: SegmenterConfig,
                train_config: SegmentTrainConfig, weights: str | None) -> dict:
    """Train the member on the non-held-out images (with `approved_count` of their masks), gate it on the held-out
    ones, and attach it to the ensemble with the proposal source the gate chose; the report."""
    held, train = data.held_out_split()
    with_truth = [i for i in train if data.truths[i] is not None]
    ranked = [with_truth[j] for j in approval_order([data.annotations[i] for i in with_truth], order,
                                                    train_config.seed)]
    approved = ranked[:approved_count]
    started = time.monotonic()
    net, target_count, losses = member_train(ensemble, data, train, approved, config, train_config, weights)
    seconds = time.monotonic() - started
    judged = [i for i in held if data.truths[i] is not None]
    source, gate = proposal_source_choose(member_masks(ensemble, net, data, judged),
                                          [data.annotations[i].consensus_mask for i in judged],
                                          [data.truths[i] for i in judged])
    ensemble.segmenter = net
    ensemble.manifest.segmenter = config
    ensemble.manifest.annotate = replace(ensemble.manifest.annotate, proposal=source)
    return {"train_images": len(train), "targets": target_count, "approved_masks": len(approved),
            "approval_order": order, "held_out_images": len(judged), "gate": gate, "proposal": source,
            "epochs": train_config.epochs, "input_size": config.input_size, "seed": train_config.seed,
            "pseudo_masks_beside_approved": train_config.pseudo_masks_beside_approved,
            "training_seconds": round(seconds), "final_loss": round(losses[-1], 4)}


def learning_curve(ensemble, train: LabelledImages, test: LabelledImages, ks: list[int | None], orders: list[str],
                   seeds: list[int], config: SegmenterConfig, train_config: SegmentTrainConfig,
                   weights: str | None, progress=partial(print, flush=True)) -> list[dict]:
    """One row per (k, order): the member's mean IoU and Dice on the test set's lesion images over the seeds, and its
    training time. k None stands for every mask of the training set; k 0 and k None are the same in either order."""
    indices = list(range(len(train.images)))
    with_truth = [i for i in indices if train.truths[i] is not None]
    rows = []
    for k in ks:
        for order in (orders if k not in (0, None) else orders[:1]):
            ious, dices, seconds = [], [], []
            for seed in seeds:
                ranked = [with_truth[j] for j in approval_order([train.annotations[i] for i in with_truth], order,
                                                                seed)]
                started = time.monotonic()
                net, _, _ = member_train(ensemble, train, indices, ranked if k is None else ranked[:k], config,
                                         replace(train_config, seed=seed), weights)
                seconds.append(time.monotonic() - started)
                iou, dice = lesion_overlap(member_masks(ensemble, net, test, list(range(len(test.images)))),
                                           test.truths)
                ious.append(iou)
                dices.append(dice)
            rows.append({"k": len(with_truth) if k is None else min(k, len(with_truth)),
                         "order": order if k not in (0, None) else "–", "iou": ious, "dice": dices,
                         "seconds": float(np.mean(seconds))})
            progress(curve_row(rows[-1]))
    return rows


def curve_row(row: dict) -> str:
    return (f"| {row['k']} | {row['order']} | {_spread(row['iou'])} | {_spread(row['dice'])} | "
            f"{row['seconds']:.0f} s |")


def curve_table(rows: list[dict], test: LabelledImages, seeds: list[int]) -> str:
    """The learning curve, with the panel's proposal and the paper's intersection on the same test images below."""
    lesions = sum(t is not None and t.any() for t in test.truths)
    panel = lesion_overlap([a.consensus_mask for a in test.annotations], test.truths)
    paper = lesion_overlap([a.paper_mask for a in test.annotations], test.truths)
    lines = ["| Approved masks | Order | Member IoU | Member Dice | Training time |", "|---:|---|---:|---:|---:|"]
    lines += [curve_row(row) for row in rows]
    lines += [f"| the panel's proposal (no member) | | {100 * panel[0]:.1f} % | {100 * panel[1]:.1f} % | |",
              f"| the paper's intersection | | {100 * paper[0]:.1f} % | {100 * paper[1]:.1f} % | |", "",
              f"Mean over {lesions} lesion images of {len(test.images)} test images (a healthy diagnosis proposes "
              f"nothing and scores 0); member figures are the mean ± standard deviation over seeds {seeds}."]
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f} %"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f} %"


def _member_configs(args) -> tuple[SegmenterConfig, SegmentTrainConfig, str | None]:
    weights = imagenet_weights_resolve([args.encoder], {}, use_hub=not args.no_hub)[args.encoder]
    return (SegmenterConfig(encoder=args.encoder, input_size=args.input_size),
            SegmentTrainConfig(epochs=args.epochs, seed=args.seed,
                               freeze_encoder_batchnorm=not args.train_encoder_batchnorm,
                               pseudo_masks_beside_approved=args.pseudo_masks_beside_approved), weights)


def _rows(data: Path, excluded: set[str], limit: int | None = None) -> list[dict]:
    return [row for row in rows_read(data, limit) if Path(row["filename"]).name not in excluded]


def segment_command(args) -> None:
    """`python -m ml segment`, its flags parsed by ml.__main__."""
    ensemble = load_ensemble(args.model)
    rows = _rows(args.data, args.excluded, args.limit)
    data = labelled_images_read(ensemble, rows, args.data.parent, args.masks, args.batch_size)
    config, train_config, weights = _member_configs(args)
    report = segment_fit(ensemble, data, args.approved, args.order, config, train_config, weights)
    gate = report["gate"]
    print(f"trained on {report['train_images']} images ({report['targets']} with a target, "
          f"{report['approved_masks']} approved masks) in {report['training_seconds']} s")
    if "segmentation_iou" in gate:
        print(f"held-out lesion masks: {gate['images']}; member IoU {100 * gate['segmentation_iou']:.1f} %, "
              f"consensus IoU {100 * gate['consensus_iou']:.1f} %")
    else:
        print(f"gate: {gate['reason']}")
    print(f"proposal: {report['proposal']}")
    if args.write:
        ensemble.manifest.metrics["segmenter"] = {**report, "data": str(args.data)}
        save_ensemble(ensemble, args.model)
        print(f"written into {args.model}")


def learning_curve_command(args) -> None:
    """`python -m ml learning-curve`, its flags parsed by ml.__main__."""
    if unknown := set(args.orders) - set(ORDERS):
        raise SystemExit(f"error: unknown orders {sorted(unknown)}; use {', '.join(ORDERS)}")
    ensemble = load_ensemble(args.model)
    train_rows, test_rows = _rows(args.data, args.excluded, args.limit), _rows(args.test, set())
    shared = {Path(row["filename"]).name for row in train_rows} & {Path(row["filename"]).name for row in test_rows}
    if shared:
        raise SystemExit(f"error: {len(shared)} images are in both --data and --test (e.g. {sorted(shared)[0]}); "
                         "leave them out of the training data with --exclude")
    train = labelled_images_read(ensemble, train_rows, args.data.parent, args.masks, args.batch_size)
    test = labelled_images_read(ensemble, test_rows, args.test.parent, args.test_masks, args.batch_size)
    config, train_config, weights = _member_configs(args)
    print("| Approved masks | Order | Member IoU | Member Dice | Training time |", "|---:|---|---:|---:|---:|",
          sep="\n", flush=True)
    rows = learning_curve(ensemble, train, test, args.ks, args.orders, args.seeds, config, train_config, weights)
    print()
    print(curve_table(rows, test, args.seeds))
