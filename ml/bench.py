"""`python -m ml bench`: annotate() against a naive baseline, against the floor of its model passes, refined, and
with the segmentation member."""
from __future__ import annotations

import dataclasses
import resource
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ml.cam import BatchedXGradCam
from ml.config import DEFAULT_ARCHITECTURES, AnnotateConfig, EnsembleManifest, SegmenterConfig
from ml.data import images_to_tensor
from ml.ensemble import Ensemble, annotate, ensemble_build, load_ensemble
from ml.models import model_target_layer
from ml.segment import segmenter_build


def bench_command(args) -> None:
    """`python -m ml bench`, its flags parsed by ml.__main__."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    ensemble = _ensemble(args.model, args.input_size, device)
    config = dataclasses.replace(ensemble.manifest.annotate, mc_samples=args.samples, refine="none",
                                 proposal="consensus")
    refined = dataclasses.replace(config, refine=REFINED_BY)
    # The segmentation member beside the refined consensus: the checkpoint's, else a fresh one (its cost is the same).
    with_member = dataclasses.replace(ensemble, segmenter=ensemble.segmenter or segmenter_build(SegmenterConfig()))
    with_member.to(device)
    ensemble = dataclasses.replace(ensemble, segmenter=None)
    images = _random_images(args.images, ensemble.manifest.input_size)
    methods = {  # name: (run over a few images, images to warm it up on)
        "ours": (lambda few: annotate(ensemble, few, config, args.batch_size), args.batch_size),
        "refined": (lambda few: annotate(ensemble, few, refined, args.batch_size), args.batch_size),
        "member": (lambda few: annotate(with_member, few, dataclasses.replace(refined, proposal="segmentation"),
                                        args.batch_size), args.batch_size),
        "floor": (lambda few: _floor(ensemble, few), args.batch_size),
        "naive": (lambda few: _naive(ensemble, few, config), 1),
    }
    seconds, peak_mib = _measure(methods, images, args.batch_size, device)
    _print_table(seconds, peak_mib, args, ensemble.manifest.input_size, device)


REFINED_BY = "ultrasound"  # the refinement the demo ensemble's manifest chose


def _ensemble(folder: Path | None, input_size: int | None, device: torch.device) -> Ensemble:
    if folder:
        ensemble = load_ensemble(folder, str(device))
    else:
        manifest = EnsembleManifest(architectures=list(DEFAULT_ARCHITECTURES), classes=["normal", "lesion"],
                                    healthy_class="normal")
        ensemble = ensemble_build(manifest).to(device)  # random weights: model_build never downloads without them
    if input_size:
        ensemble.manifest = dataclasses.replace(ensemble.manifest, input_size=input_size)
    for model in ensemble.models.values():
        model.eval()
    return ensemble


def _random_images(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _measure(methods: dict, images: list[Image.Image], batch_size: int,
             device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds and peak memory (MiB) of each method over all images, after one warm-up call each.

    The methods take turns batch by batch, so that load from elsewhere on the machine slows them alike. The order
    reverses every batch: whatever runs right after the naive method's many small passes was seen to run slower.
    """
    for run, warm_up_images in methods.values():
        run(images[:warm_up_images])
    seconds, peak_mib = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, 0.0)
    order = list(methods)
    for index, start in enumerate(range(0, len(images), batch_size)):
        for name in order if index % 2 == 0 else reversed(order):
            run, _ = methods[name]
            _synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
            run(images[start:start + batch_size])
            _synchronize(device)
            seconds[name] += time.perf_counter() - began
            peak_mib[name] = max(peak_mib[name], _peak_mib(device))
    return seconds, peak_mib


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def _floor(ensemble: Ensemble, images: list[Image.Image]) -> None:
    """Only the model passes XGrad-CAM cannot do without, on the images as one batch: per model one forward pass
    and the gradient back to the target layer; no MC-Dropout, no heatmap arithmetic, no masks."""
    batch = images_to_tensor(images, ensemble.manifest).to(ensemble.device)
    for model in ensemble.models.values():
        forward = BatchedXGradCam(model).forward(batch)
        disease = forward.logits[:, ensemble.manifest.disease_classes[0]]
        torch.autograd.grad(disease.sum(), forward.activations)


def _naive(ensemble: Ensemble, images: list[Image.Image], config: AnnotateConfig) -> None:
    """Image by image: T full stochastic passes per model, then one pytorch-grad-cam XGradCAM per model."""
    manifest = ensemble.manifest
    disease = torch.tensor(manifest.disease_classes)
    with ExitStack() as stack:
        cams = {arch: stack.enter_context(XGradCAM(model=model, target_layers=[model_target_layer(model)]))
                for arch, model in ensemble.models.items()}
        for image in images:
            one = images_to_tensor([image], manifest).to(ensemble.device)
            means = [_full_mc_dropout_probs(model, one, config.mc_samples).mean(0)
                     for model in ensemble.models.values()]
            ensemble_mean = torch.stack(means).mean(0)
            cam_class = int(disease[ensemble_mean[0, disease].argmax()])
            for cam in cams.values():
                cam(input_tensor=one, targets=[ClassifierOutputTarget(cam_class)])
    for model in ensemble.models.values():
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward pass fills the parameters' .grad


def _full_mc_dropout_probs(model: nn.Module, images: torch.Tensor, samples: int) -> torch.Tensor:
    """`samples` passes through the whole model with its dropout on and BatchNorm in eval."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        with torch.no_grad():
            return torch.stack([F.softmax(model(images), -1) for _ in range(samples)])
    finally:
        model.eval()


def _print_table(seconds: dict[str, float], peak_mib: dict[str, float], args, input_size: int,
                 device: torch.device) -> None:
    on_gpu = device.type == "cuda"
    print(f"{'':7} {'images/s':>9} {'seconds':>8}" + (f" {'peak GPU MiB':>12}" if on_gpu else ""))
    for name in seconds:
        memory = f" {peak_mib[name]:12.0f}" if on_gpu else ""
        print(f"{name:7} {args.images / seconds[name]:9.2f} {seconds[name]:8.2f}{memory}")
    if not on_gpu:
        # One process runs all the methods in turn, so its peak RSS cannot be split between them.
        print(f"peak RSS of the process, all five methods: {max(peak_mib.values()):.0f} MiB")
    print(f"ours vs naive: {seconds['naive'] / seconds['ours']:.1f}x faster (goal >= 5x)")
    print(f"ours / floor time: {seconds['ours'] / seconds['floor']:.2f} (goal <= 1.3)")
    print(f"refined ({REFINED_BY}) / ours time: {seconds['refined'] / seconds['ours']:.2f} (goal <= 1.5)")
    print(f"refined and the segmentation member / ours time: {seconds['member'] / seconds['ours']:.2f} (goal <= 1.5)")
    print(f"batch size {args.batch_size}, input {input_size}, T {args.samples}, images {args.images}, "
          f"device {device}, torch threads {torch.get_num_threads()}")
