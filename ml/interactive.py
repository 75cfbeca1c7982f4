"""Correcting a mask with clicks: a positive click says "lesion here", a negative one "not lesion", and the mask is
redrawn around what was said. One function, `mask_refine(image, mask, clicks, refiner)`, returns the new mask:

- with a trained click refiner (`ClickRefiner`): a click-conditioned network, the segmentation member's
  encoder–decoder (ml/segment.py) with three more input channels (the current mask, disks at the positive clicks and
  at the negative ones), initialised from the member and trained with simulated clicks, iteratively, as RITM does
  (Sofiiuk et al., arXiv 2102.06583). It sees a square crop around the mask and the positive clicks, resized to its
  input (RITM's and FocalClick's zoom-in), so a small lesion gets the network's whole resolution; its answer is
  averaged with its answer on the mirrored crop.
- without one: OpenCV's GrabCut in the same crop, the clicks as sure lesion and sure background, the current mask as
  probably lesion and the rest as probably background. It needs no training, and is the baseline the network must beat.

Either way the pixels under a click end as the click says. Nothing here is stored: the caller saves the result as an
ordinary mask version, or not.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from ml.checkpoint import weights_load
from ml.config import EnsembleManifest, SegmenterConfig
from ml.segment import (SegmentationNet, batches_train, encoder_batchnorm_recalibrate, normalise,
                        segmenter_loss)

REFINER_NAME = "refiner.safetensors"
REFINER_CHANNELS = 6  # the image's three, the current mask, positive and negative click disks
MAX_CLICKS = 100  # per request: a scribble arrives as a few points along its path
CLICK_RADIUS = 5  # pixels of the network's input a click's disk covers
HONOURED_RADIUS = 0.01  # the disk under a click set as it says, as a share of the image's shorter side (at least 2 px)
FOCUS_MARGIN = 0.4  # the crop extends the box of the mask and positive clicks by this share of its side, each way
MIN_FOCUS = 0.2  # and is at least this share of the image's shorter side,
EMPTY_FOCUS = 0.5  # or of this share where there is no mask yet: around a first click the lesion's size is unknown
GRABCUT_SIDE = 160  # pixels of the crop's longer side at which GrabCut runs (its graph cuts cost ~1 s at 320 px)
GRABCUT_ITERATIONS = 4
GRABCUT_PROBABLE = 0.08  # around a click GrabCut takes a disk of this share of the shorter side as probably so
WORK_SIDE = 320  # training images are scaled to at most this longer side: the crops are resized anyway


@dataclass(frozen=True)
class Click:
    x: float  # pixels from the image's left edge
    y: float  # pixels from the image's top edge
    positive: bool  # True: lesion here; False: not lesion


def clicks_check(clicks: list[Click], width: int, height: int) -> None:
    """ValueError with the reason when the clicks cannot be used on a width x height image."""
    if len(clicks) > MAX_CLICKS:
        raise ValueError(f"at most {MAX_CLICKS} clicks at a time, got {len(clicks)}")
    for n, click in enumerate(clicks, 1):
        if not (0 <= click.x < width and 0 <= click.y < height):
            raise ValueError(f"click {n} at ({click.x:g}, {click.y:g}) lies outside the {width}x{height} image")


def mask_refine(image: np.ndarray, mask: np.ndarray, clicks: list[Click],
                refiner: "ClickRefiner | None" = None) -> np.ndarray:
    """The mask (bool, the image's size) redrawn after the clicks; `image` is uint8, grayscale or RGB."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.shape[1]}x{image.shape[0]}")
    clicks_check(clicks, image.shape[1], image.shape[0])
    mask = mask.astype(bool)
    if not clicks:
        return mask
    refined = (refiner.refine(image, mask, clicks) if refiner is not None
               else refine_clicks_grabcut(image, mask, clicks))
    return clicks_honour(refined, clicks)


def clicks_honour(mask: np.ndarray, clicks: list[Click]) -> np.ndarray:
    """The mask with a small disk under each click set as the click says, later clicks over earlier ones."""
    out = mask.astype(np.uint8)
    radius = max(2, round(HONOURED_RADIUS * min(mask.shape)))
    for click in clicks:
        cv2.circle(out, (int(click.x), int(click.y)), radius, int(click.positive), -1)
    return out.astype(bool)


def focus_box(mask: np.ndarray, clicks: list[Click], margin: float = FOCUS_MARGIN) -> tuple[int, int, int, int] | None:
    """The crop (x0, y0, x1, y1) a refinement looks at: the box of the mask and the positive clicks, grown by
    `margin` of its side each way, at least MIN_FOCUS (EMPTY_FOCUS) of the image; None when there is neither
    (nothing to refine)."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    xs = np.concatenate([xs, [c.x for c in clicks if c.positive]])
    ys = np.concatenate([ys, [c.y for c in clicks if c.positive]])
    if not len(xs):
        return None
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) * (1 + 2 * margin)
    side = max(side, (MIN_FOCUS if mask.any() else EMPTY_FOCUS) * min(height, width))
    box = []
    for centre, extent in ((cx, width), (cy, height)):
        span = min(side, extent)
        start = int(round(min(max(centre - span / 2, 0), extent - span)))
        box.append((start, min(extent, start + max(1, int(round(span))))))
    (x0, x1), (y0, y1) = box
    return x0, y0, x1, y1


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _as_gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


# ---- the training-free refiner ----
def refine_clicks_grabcut(image: np.ndarray, mask: np.ndarray, clicks: list[Click]) -> np.ndarray:
    box = focus_box(mask, clicks)
    if box is None:
        return mask
    x0, y0, x1, y1 = box
    scale = min(1.0, GRABCUT_SIDE / max(x1 - x0, y1 - y0))
    small = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    crop = cv2.resize(_as_gray(image)[y0:y1, x0:x1], small, interpolation=cv2.INTER_AREA)
    seeds = np.where(cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), small, interpolation=cv2.INTER_NEAREST) > 0,
                     cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    # A click says more than its pixel: the region around it probably is as it says, the pixel surely.
    sure = max(1, round(HONOURED_RADIUS * min(mask.shape) * scale))
    probable = max(sure, round(GRABCUT_PROBABLE * min(mask.shape) * scale))
    for radius, positive, negative in ((probable, cv2.GC_PR_FGD, cv2.GC_PR_BGD), (sure, cv2.GC_FGD, cv2.GC_BGD)):
        for click in clicks:
            centre = (int((click.x - x0) * scale), int((click.y - y0) * scale))
            cv2.circle(seeds, centre, radius, positive if click.positive else negative, -1)
    lesion = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    if lesion.all() or not lesion.any():
        return mask  # one colour model would have no pixels to learn from
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut starts its colour models with k-means on OpenCV's RNG: the same input, the same mask
    cv2.grabCut(cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR), seeds, None, background, foreground, GRABCUT_ITERATIONS,
                cv2.GC_INIT_WITH_MASK)
    lesion = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8)
    out = np.zeros_like(mask, dtype=bool)
    out[y0:y1, x0:x1] = cv2.resize(lesion, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0
    return out


# ---- the click-conditioned network ----
def refiner_from_member(member: SegmentationNet, input_size: int | None = None) -> SegmentationNet:
    """A refiner that starts as the member: its weights, the first convolution's extra input channels at zero (so
    before training it ignores the mask and clicks and segments as the member does); at the member's input size
    unless given another (the network is fully convolutional)."""
    config = member.config if input_size is None else replace(member.config, input_size=input_size)
    net = SegmentationNet(config, in_chans=REFINER_CHANNELS)
    state = net.state_dict()
    for key, tensor in member.state_dict().items():
        if state[key].shape == tensor.shape:
            state[key] = tensor.clone()
        else:  # the first convolution: (out, 3, k, k) into (out, 6, k, k)
            state[key] = torch.zeros_like(state[key])
            state[key][:, :tensor.shape[1]] = tensor
    net.load_state_dict(state)
    return net


def refiner_net_load(config: SegmenterConfig, folder: str | Path) -> SegmentationNet:
    net = SegmentationNet(config, in_chans=REFINER_CHANNELS)
    net.load_state_dict(weights_load(Path(folder) / REFINER_NAME))
    return net.eval()


@dataclass
class ClickRefiner:
    """A refiner network with the normalisation its encoder was trained with."""

    net: SegmentationNet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def refine(self, image: np.ndarray, mask: np.ndarray, clicks: list[Click]) -> np.ndarray:
        box = focus_box(mask, clicks)
        if box is None:
            return mask
        with torch.no_grad():
            probs = self.flip_averaged_probabilities(_as_rgb(image), mask, clicks, box)
        return crop_paste(probs, box, mask.shape, self.net.config.threshold)

    def flip_averaged_probabilities(self, image: np.ndarray, mask: np.ndarray, clicks: list[Click],
                                    box: tuple[int, int, int, int]) -> np.ndarray:
        """The crop's probabilities averaged with those of its mirror image, in one batch of two: the outline no
        longer depends on which way the lesion faces, for twice the network's time per click (measured in
        docs/engine.md, correcting with clicks)."""
        width = mask.shape[1]
        x0, y0, x1, y1 = box
        mirrored = [Click(width - 1 - c.x, c.y, c.positive) for c in clicks]
        probs, flipped = self.crop_probabilities(
            [image, np.ascontiguousarray(image[:, ::-1])], [mask, np.ascontiguousarray(mask[:, ::-1])],
            [clicks, mirrored], [box, (width - x1, y0, width - x0, y1)])
        return (probs + flipped[:, ::-1]) / 2

    def crop_probabilities(self, images, masks, clicks, boxes) -> list[np.ndarray]:
        """Each crop's lesion probability at the network's input size."""
        logits = self.net(self.inputs(images, masks, clicks, boxes))
        return list(torch.sigmoid(logits)[:, 0].cpu().numpy())

    def inputs(self, images, masks, clicks, boxes) -> torch.Tensor:
        size = self.net.config.input_size
        pictures, hints = [], []
        for image, mask, these, (x0, y0, x1, y1) in zip(images, masks, clicks, boxes):
            pictures.append(cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR))
            current = cv2.resize(mask[y0:y1, x0:x1].astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            disks = np.zeros((2, size, size), np.float32)
            for click in these:
                centre = (int((click.x - x0) * size / (x1 - x0)), int((click.y - y0) * size / (y1 - y0)))
                cv2.circle(disks[0 if click.positive else 1], centre, CLICK_RADIUS, 1.0, -1)
            hints.append(np.concatenate([current[None], disks]))
        batch = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255
        return torch.cat([normalise(batch, self.mean, self.std), torch.from_numpy(np.stack(hints))], 1).to(self.device)


def crop_paste(probs: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
               threshold: float) -> np.ndarray:
    """A mask of `shape`: the crop's probabilities (any size) resized into the box, then thresholded; empty elsewhere.
    Resizing the probabilities rather than the thresholded mask keeps the outline smooth where the box is larger
    than the network's input (measured in docs/engine.md, correcting with clicks)."""
    x0, y0, x1, y1 = box
    out = np.zeros(shape, dtype=bool)
    out[y0:y1, x0:x1] = cv2.resize(probs.astype(np.float32), (x1 - x0, y1 - y0),
                                   interpolation=cv2.INTER_LINEAR) > threshold
    return out


def refiner_load(folder: str | Path, device: str | torch.device = "cpu") -> ClickRefiner | None:
    """The click refiner of a checkpoint folder, without the panel; None when it has none."""
    manifest = EnsembleManifest.from_dict(json.loads((Path(folder) / "manifest.json").read_text()))
    if manifest.refiner is None:
        return None
    return ClickRefiner(refiner_net_load(manifest.refiner, folder).to(device), manifest.mean, manifest.std,
                        torch.device(device))


# ---- the simulated radiologist's clicks ----
def next_click(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """The standard protocol's next click: at the centre (the point farthest from its edge) of the largest error
    region, positive where the lesion was missed, negative where the mask is wrong; None when there is no error."""
    best = None
    for positive, error in ((True, truth & ~prediction), (False, prediction & ~truth)):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        for label in range(1, count):
            area = int(stats[label, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, positive, labels == label)
    if best is None:
        return None
    _, positive, region = best
    # Padded so that the image's border counts as an edge too.
    distance = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(float(x), float(y), positive)


def click_sample(prediction: np.ndarray, truth: np.ndarray, rng: random.Random) -> Click | None:
    """A training click: in an error region picked with odds by its area, at a random point well inside it."""
    regions = []
    for positive, error in ((True, truth & ~prediction), (False, prediction & ~truth)):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        regions += [(int(stats[label, cv2.CC_STAT_AREA]), positive, labels, label) for label in range(1, count)]
    if not regions:
        return None
    _, positive, labels, label = rng.choices(regions, weights=[r[0] for r in regions])[0]
    region = np.pad(labels == label, 1).astype(np.uint8)
    distance = cv2.distanceTransform(region, cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(distance >= distance.max() * rng.uniform(0.3, 0.9))
    pick = rng.randrange(len(xs))
    return Click(float(xs[pick]), float(ys[pick]), positive)


# ---- training ----
@dataclass(frozen=True)
class RefinerTrainConfig:
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3  # the decoder's and the new input channels'; the encoder moves at a tenth of it
    weight_decay: float = 1e-4
    max_initial_clicks: int = 3  # clicks sampled at random on the starting mask
    max_iterations: int = 3  # then up to this many rounds of: predict, add the protocol's next click (RITM)
    # Keep the encoder's BatchNorm statistics (the member's) while training. On the demo's 81 held-out BUSI lesion
    # masks (30 epochs, seed 0, the same member to start from): NoC@85 4.74, IoU@1 68.3 % kept; 6.94, 62.0 %
    # re-estimated on batches of 8 crops. A third refiner, kept too but started from another member, needed 8.02:
    # trainings spread as widely as the two settings differ (demo/README.md).
    freeze_encoder_batchnorm: bool = True
    # ... after estimating them afresh on one pass over the training crops (encoder_batchnorm_recalibrate): a member
    # that kept ImageNet's statistics would hand the refiner statistics of photographs, not of ultrasound crops with
    # clicks, to keep (measured in docs/engine.md, correcting with clicks).
    recalibrate_encoder_batchnorm: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be at least 1 and batch_size at least 2 (BatchNorm)")


@dataclass
class RefinerSample:
    """A lesion image (uint8 RGB), its true mask and the mask the app would propose for it (the starting point)."""

    image: np.ndarray
    truth: np.ndarray
    proposal: np.ndarray


def refiner_sample(image: np.ndarray, truth: np.ndarray, proposal: np.ndarray) -> RefinerSample:
    """A sample at most WORK_SIDE pixels on its longer side."""
    scale = min(1.0, WORK_SIDE / max(truth.shape))
    size = (max(1, round(truth.shape[1] * scale)), max(1, round(truth.shape[0] * scale)))

    def nearest(mask):
        return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0

    return RefinerSample(cv2.resize(_as_rgb(image), size, interpolation=cv2.INTER_AREA), nearest(truth),
                         nearest(proposal))


def _starting_mask(sample: RefinerSample, rng: random.Random) -> np.ndarray:
    """Where a correction starts: the app's proposal, the truth grown, shrunk or shifted, or nothing."""
    draw = rng.random()
    if draw < 0.4:
        return sample.proposal
    if draw < 0.55:
        return np.zeros_like(sample.truth)
    truth = sample.truth.astype(np.uint8)
    radius = max(1, int(rng.uniform(0.05, 0.3) * np.sqrt(truth.sum())))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    changed = cv2.dilate(truth, kernel) if rng.random() < 0.5 else cv2.erode(truth, kernel)
    if draw > 0.85:  # shifted by up to half the image: a proposal in the wrong place
        dx, dy = (int(rng.uniform(-0.5, 0.5) * side) for side in (truth.shape[1], truth.shape[0]))
        changed = cv2.warpAffine(changed, np.float32([[1, 0, dx], [0, 1, dy]]), truth.shape[::-1])
    return changed > 0


def refiner_train(refiner: ClickRefiner, samples: list[RefinerSample], config: RefinerTrainConfig,
                  on_batch: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train the network in place with simulated clicks; the mean loss per epoch. `on_batch(done, total, loss)`
    after every batch (it may raise to stop)."""
    if len(samples) < 2:
        raise ValueError("the click refiner needs at least two lesion images with a mask")
    size = refiner.net.config.input_size

    def batch_loss(chunk: list[int], rng: random.Random) -> torch.Tensor:
        images, truths, masks, clicks = _training_states(refiner, [samples[i] for i in chunk], config, rng)
        boxes = _training_boxes(masks, clicks, rng)
        targets = torch.from_numpy(np.stack([
            cv2.resize(t[y0:y1, x0:x1].astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
            for t, (x0, y0, x1, y1) in zip(truths, boxes)]))[:, None].to(refiner.device)
        logits = refiner.net(refiner.inputs(images, masks, clicks, boxes))
        return segmenter_loss(logits, targets, torch.ones_like(targets))

    if config.freeze_encoder_batchnorm and config.recalibrate_encoder_batchnorm:
        encoder_batchnorm_recalibrate(refiner.net, _recalibration_inputs(refiner, samples, config))
    return batches_train(refiner.net, len(samples), config, batch_loss, refiner.device, on_batch, "click refiner")


def _recalibration_inputs(refiner: ClickRefiner, samples: list[RefinerSample], config: RefinerTrainConfig):
    """The network's inputs for one pass over the samples in order, each as training starts it (a starting mask,
    a few random clicks, a crop of random margin), from a generator of its own: training draws the same as
    without this pass."""
    rng = random.Random(config.seed)
    starts_only = replace(config, max_iterations=0)
    for start in range(0, len(samples), config.batch_size):
        images, _, masks, clicks = _training_states(refiner, samples[start:start + config.batch_size], starts_only,
                                                    rng)
        yield refiner.inputs(images, masks, clicks, _training_boxes(masks, clicks, rng))


def _training_boxes(masks, clicks, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """The crops training looks at: around each mask and its positive clicks, with a margin drawn at random."""
    return [focus_box(m, c, rng.uniform(0.2, 0.7)) or _whole(m) for m, c in zip(masks, clicks)]


def _whole(mask: np.ndarray) -> tuple[int, int, int, int]:
    return 0, 0, mask.shape[1], mask.shape[0]


def _training_states(refiner: ClickRefiner, chunk: list[RefinerSample], config: RefinerTrainConfig,
                     rng: random.Random):
    """Each sample flipped at random, with a starting mask, a few random clicks on it, then up to max_iterations
    rounds of the network's own prediction and the protocol's next click: the states a correction passes through."""
    images, truths, masks, clicks = [], [], [], []
    for sample in chunk:
        flip = rng.random() < 0.5
        image, truth = (sample.image[:, ::-1], sample.truth[:, ::-1]) if flip else (sample.image, sample.truth)
        mask = _starting_mask(sample, rng)
        mask = mask[:, ::-1] if flip else mask
        these, shown = [], mask.copy()
        for _ in range(rng.randint(1, config.max_initial_clicks)):
            click = click_sample(shown, truth, rng)
            if click is None:
                break
            these.append(click)
            shown = clicks_honour(shown, [click])
        images.append(np.ascontiguousarray(image))
        truths.append(np.ascontiguousarray(truth))
        masks.append(np.ascontiguousarray(mask))
        clicks.append(these)
    rounds = rng.randint(0, config.max_iterations)
    if rounds:
        refiner.net.eval()
        with torch.no_grad():
            for _ in range(rounds):
                boxes = [focus_box(m, c) or _whole(m) for m, c in zip(masks, clicks)]
                probs = refiner.crop_probabilities(images, masks, clicks, boxes)
                for i, (p, box) in enumerate(zip(probs, boxes)):
                    masks[i] = clicks_honour(crop_paste(p, box, truths[i].shape, refiner.net.config.threshold),
                                             clicks[i])
                    click = next_click(masks[i], truths[i])
                    if click is not None:
                        clicks[i] = clicks[i] + [click]
        refiner.net.train()
    return images, truths, masks, clicks
