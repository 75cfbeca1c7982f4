"""`python -m ml clicks` and `python -m ml refiner`: the simulated radiologist on a labelled set, and training the
click refiner beside a checkpoint (apart from ml/clicks.py, which fine-tuning uses, as these read data via ml.curve)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ml.clicks import best_method, clicks_table, lesion_cases, methods_run, sessions_summary
from ml.config import SegmenterConfig
from ml.ensemble import save_ensemble
from ml.interactive import ClickRefiner, RefinerTrainConfig, refiner_from_member, refiner_sample, refiner_train
from ml.models import imagenet_weights_resolve
from ml.segment import segmenter_build


def clicks_command(args) -> None:
    """`python -m ml clicks`, its flags parsed by ml.__main__."""
    from ml.curve import _rows, labelled_images_read
    from ml.ensemble import load_ensemble

    ensemble = load_ensemble(args.model)
    rows = _rows(args.data, args.excluded, args.limit)
    data = labelled_images_read(ensemble, rows, args.data.parent, args.masks, args.batch_size)
    judged = data.held_out_split()[0] if args.held_out else list(range(len(rows)))
    images, truths, starts, kept = lesion_cases(data, judged)
    if not kept:
        raise SystemExit("error: no image of the manifest has a lesion mask to click towards")
    refiner = (ClickRefiner(ensemble.refiner, ensemble.manifest.mean, ensemble.manifest.std, ensemble.device)
               if ensemble.refiner is not None else None)
    targets = tuple(sorted({args.target_iou, 0.90}))
    results = methods_run(images, truths, starts, refiner, targets, args.max_clicks)
    print(f"{len(kept)} lesion images of {len(judged)}, at most {args.max_clicks} clicks each"
          + ("" if refiner else "; this checkpoint has no learned click refiner"))
    print(clicks_table(results, targets, args.max_clicks))
    method, noc = best_method(results, args.target_iou, args.max_clicks)
    print(f"NoC@{round(100 * args.target_iou)} {method}: {noc:.2f}")


def refiner_command(args) -> None:
    """`python -m ml refiner`, its flags parsed by ml.__main__: train the click refiner on the lesion masks outside
    the held-out share, judge it against GrabCut there, and keep it (with --write) only where it needs fewer clicks."""
    from ml.curve import _rows, labelled_images_read
    from ml.ensemble import load_ensemble

    ensemble = load_ensemble(args.model)
    data = labelled_images_read(ensemble, _rows(args.data, args.excluded, args.limit), args.data.parent, args.masks,
                                args.batch_size)
    held, train = data.held_out_split()
    images, truths, starts, kept = lesion_cases(data, train)
    samples = [refiner_sample(np.asarray(data.images[i].convert("RGB")), t, s)
               for i, t, s in zip(kept, truths, starts)]
    member = ensemble.segmenter
    if member is None:
        weights = imagenet_weights_resolve([args.encoder], {}, use_hub=not args.no_hub)[args.encoder]
        member = segmenter_build(SegmenterConfig(encoder=args.encoder), weights, args.seed)
    net = refiner_from_member(member, args.input_size)
    refiner = ClickRefiner(net.to(ensemble.device), ensemble.manifest.mean, ensemble.manifest.std, ensemble.device)
    train_config = RefinerTrainConfig(epochs=args.epochs, seed=args.seed,
                                      freeze_encoder_batchnorm=not args.train_encoder_batchnorm)
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
            "training_seconds": round(seconds), "freeze_encoder_batchnorm": train_config.freeze_encoder_batchnorm,
            "recalibrate_encoder_batchnorm": train_config.recalibrate_encoder_batchnorm,
            "noc85": {m: round(v, 2) for m, v in nocs.items()}, "data": str(args.data)}
        save_ensemble(ensemble, args.model)
        print(f"written into {Path(args.model)}")
