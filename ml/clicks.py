"""`python -m ml clicks` and `python -m ml refiner`: the simulated radiologist, and training the click refiner.

The simulated radiologist follows the standard protocol of interactive segmentation (RITM, SimpleClick): starting
from the proposal the app would show, each next click goes to the centre of the largest error region, positive in a
missed region, negative in a false one, and the refiner redraws the mask from the last mask and every click so far.
NoC@85 is the number of clicks until the mask overlaps the truth by 85 % IoU (0 when the proposal already does;
`max_clicks` when it never gets there). Ground-truth masks stand in for the radiologist's intent.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ml.config import SegmenterConfig
from ml.ensemble import save_ensemble
from ml.interactive import (Click, ClickRefiner, RefinerTrainConfig, mask_refine, next_click, refiner_from_member,
                            refiner_sample, refiner_train)
from ml.metrics import mask_iou
from ml.models import imagenet_weights_resolve
from ml.segment import segmenter_build

METHODS = ("proposal", "grabcut", "learned")  # no refinement (clicks change nothing), training-free, the network
REPORTED_CLICKS = (1, 3, 5)


@dataclass
class ClickSession:
    ious: list[float]  # IoU with the truth after 0, 1, 2, … clicks
    seconds: list[float]  # time each refinement took

    def clicks_to(self, target: float, max_clicks: int) -> int:
        return next((n for n, iou in enumerate(self.ious) if iou >= target), max_clicks)

    def iou_after(self, clicks: int) -> float:
        return self.ious[min(clicks, len(self.ious) - 1)]  # a session that stopped early keeps its last mask


def click_session(image: np.ndarray, truth: np.ndarray, start: np.ndarray,
                  refine: Callable[[np.ndarray, np.ndarray, list[Click]], np.ndarray] | None,
                  max_clicks: int, stop_iou: float) -> ClickSession:
    """Click as the protocol says until the mask reaches `stop_iou` (and at least max(REPORTED_CLICKS) clicks were
    given) or `max_clicks` is spent; `refine` None changes nothing (the proposal alone)."""
    mask, clicks = start.astype(bool), []
    session = ClickSession([mask_iou(mask, truth)], [])
    while len(clicks) < max_clicks and (session.ious[-1] < stop_iou or len(clicks) < max(REPORTED_CLICKS)):
        click = next_click(mask, truth)
        if click is None:
            break  # the mask is the truth
        clicks.append(click)
        if refine is not None:
            started = time.perf_counter()
            mask = refine(image, mask, clicks)
            session.seconds.append(time.perf_counter() - started)
        session.ious.append(mask_iou(mask, truth))
    return session


def method_refine(method: str, refiner: ClickRefiner | None):
    if method == "proposal":
        return None
    if method == "learned":
        return lambda image, mask, clicks: mask_refine(image, mask, clicks, refiner)
    return lambda image, mask, clicks: mask_refine(image, mask, clicks)


def methods_run(images, truths, starts, refiner: ClickRefiner | None, targets: tuple[float, ...], max_clicks: int,
                methods: tuple[str, ...] = METHODS) -> dict[str, list[ClickSession]]:
    """Every method's session on every lesion image; "learned" only with a refiner."""
    chosen = [m for m in methods if m != "learned" or refiner is not None]
    return {method: [click_session(image, truth, start, method_refine(method, refiner), max_clicks, max(targets))
                     for image, truth, start in zip(images, truths, starts)] for method in chosen}


def sessions_summary(sessions: list[ClickSession], targets: tuple[float, ...], max_clicks: int) -> dict:
    seconds = [s for session in sessions for s in session.seconds]
    return {"noc": {t: float(np.mean([s.clicks_to(t, max_clicks) for s in sessions])) for t in targets},
            "iou": {k: float(np.mean([s.iou_after(k) for s in sessions])) for k in REPORTED_CLICKS},
            "ms_per_click": 1000 * float(np.mean(seconds)) if seconds else None}


def clicks_table(results: dict[str, list[ClickSession]], targets: tuple[float, ...], max_clicks: int) -> str:
    names = {"proposal": "the proposal, no refinement", "grabcut": "GrabCut from the clicks (training-free)",
             "learned": "click refiner (learned)"}
    head = ["Method"] + [f"NoC@{round(100 * t)}" for t in targets] + [f"IoU@{k}" for k in REPORTED_CLICKS]
    lines = ["| " + " | ".join(head + ["ms per click"]) + " |", "|---" + "|---:" * (len(head)) + "|"]
    for method, sessions in results.items():
        summary = sessions_summary(sessions, targets, max_clicks)
        ms = "–" if summary["ms_per_click"] is None else f"{summary['ms_per_click']:.0f}"
        lines.append("| " + " | ".join([names[method]] + [f"{summary['noc'][t]:.2f}" for t in targets]
                                       + [f"{100 * summary['iou'][k]:.1f} %" for k in REPORTED_CLICKS] + [ms]) + " |")
    return "\n".join(lines)


def best_method(results: dict[str, list[ClickSession]], target: float, max_clicks: int) -> tuple[str, float]:
    nocs = {m: sessions_summary(s, (target,), max_clicks)["noc"][target] for m, s in results.items()}
    method = min(nocs, key=lambda m: (nocs[m], METHODS.index(m)))
    return method, nocs[method]


def lesion_masks_judge(images, truths, starts, refiner: ClickRefiner | None, max_clicks: int = 10) -> float:
    """NoC@85 of the simulated radiologist on these lesion images with the refiner (None: GrabCut)."""
    method = "learned" if refiner is not None else "grabcut"
    sessions = methods_run(images, truths, starts, refiner, (0.85,), max_clicks, (method,))[method]
    return sessions_summary(sessions, (0.85,), max_clicks)["noc"][0.85]


def lesion_cases(data, indices: list[int]):
    """Grayscale images, truths and the app's proposals of the indexed images whose truth outlines a lesion."""
    kept = [i for i in indices if data.truths[i] is not None and data.truths[i].any()]
    images = [np.asarray(data.images[i].convert("L")) for i in kept]
    return images, [data.truths[i] for i in kept], [data.annotations[i].mask for i in kept], kept


def clicks_command(args) -> None:
    """`python -m ml clicks`, its flags parsed by ml.__main__."""
    from ml.curve import _rows, labelled_images_read
    from ml.ensemble import load_ensemble

    ensemble = load_ensemble(args.model)
    rows = _rows(args.data, set(), args.limit)
    data = labelled_images_read(ensemble, rows, args.data.parent, args.masks, args.batch_size)
    images, truths, starts, kept = lesion_cases(data, list(range(len(rows))))
    if not kept:
        raise SystemExit("error: no image of the manifest has a lesion mask to click towards")
    refiner = (ClickRefiner(ensemble.refiner, ensemble.manifest.mean, ensemble.manifest.std, ensemble.device)
               if ensemble.refiner is not None else None)
    targets = tuple(sorted({args.target_iou, 0.90}))
    results = methods_run(images, truths, starts, refiner, targets, args.max_clicks)
    print(f"{len(kept)} lesion images of {len(rows)}, at most {args.max_clicks} clicks each"
          + ("" if refiner else "; this checkpoint has no learned click refiner"))
    print(clicks_table(results, targets, args.max_clicks))
    method, noc = best_method(results, args.target_iou, args.max_clicks)
    print(f"NoC@{round(100 * args.target_iou)} {method}: {noc:.2f}")


def refiner_command(args) -> None:
    """`python -m ml refiner`, its flags parsed by ml.__main__: train the click refiner on the lesion masks outside
    the held-out share, judge it against GrabCut there, and keep it (with --write) only where it needs fewer clicks."""
    from ml.curve import HELD_OUT_PERCENT, _rows, labelled_images_read
    from ml.ensemble import load_ensemble
    from ml.finetune import held_out

    ensemble = load_ensemble(args.model)
    data = labelled_images_read(ensemble, _rows(args.data, args.excluded, args.limit), args.data.parent, args.masks,
                                args.batch_size)
    held = [i for i, key in enumerate(data.keys) if held_out(key, HELD_OUT_PERCENT)]
    train = [i for i, key in enumerate(data.keys) if not held_out(key, HELD_OUT_PERCENT)]
    images, truths, starts, kept = lesion_cases(data, train)
    samples = [refiner_sample(np.asarray(data.images[i].convert("RGB")), t, s)
               for i, t, s in zip(kept, truths, starts)]
    member = ensemble.segmenter
    if member is None:
        weights = imagenet_weights_resolve([args.encoder], {}, use_hub=not args.no_hub)[args.encoder]
        member = segmenter_build(SegmenterConfig(encoder=args.encoder), weights)
    net = refiner_from_member(member)
    refiner = ClickRefiner(net.to(ensemble.device), ensemble.manifest.mean, ensemble.manifest.std, ensemble.device)
    train_config = RefinerTrainConfig(epochs=args.epochs, seed=args.seed)
    started = time.monotonic()
    losses = refiner_train(refiner, samples, train_config,
                           on_batch=lambda done, total, loss: print(f"\rbatch {done}/{total} loss {loss:.4f}",
                                                                    end="", flush=True))
    seconds = time.monotonic() - started
    print(f"\ntrained on {len(samples)} lesion masks in {seconds:.0f} s (loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    images, truths, starts, judged = lesion_cases(data, held)
    targets = (0.85, 0.90)
    results = methods_run(images, truths, starts, refiner, targets, args.max_clicks, ("grabcut", "learned"))
    print(f"held out: {len(judged)} lesion masks")
    print(clicks_table(results, targets, args.max_clicks))
    nocs = {m: sessions_summary(s, targets, args.max_clicks)["noc"][0.85] for m, s in results.items()}
    keep = len(judged) > 0 and nocs["learned"] < nocs["grabcut"]
    print("the learned refiner " + ("needs fewer clicks: kept" if keep else "is no better than GrabCut: not kept"))
    if args.write and keep:
        ensemble.refiner = net
        ensemble.manifest.refiner = net.config
        ensemble.manifest.metrics["refiner"] = {
            "train_masks": len(samples), "held_out_masks": len(judged), "epochs": args.epochs, "seed": args.seed,
            "training_seconds": round(seconds), "noc85": {m: round(v, 2) for m, v in nocs.items()},
            "data": str(args.data)}
        save_ensemble(ensemble, args.model)
        print(f"written into {Path(args.model)}")
