"""XGrad-CAM heatmaps (Fu et al. 2020): pytorch-grad-cam's reference implementation and a batched one."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml.models import model_classifier, model_target_layer

EPSILON = 1e-7  # pytorch-grad-cam's, both in the XGrad-CAM weights and in its min-max scaling


@dataclass
class CamForward:
    """One eval-mode forward pass of a model, held open until the classes to explain are known."""

    activations: torch.Tensor  # the target layer's output: a leaf, so the backward pass stops there
    logits: torch.Tensor  # computed from `activations` through the model's own head
    pooled: torch.Tensor  # detached pooled features, the classifier's input (and MC-Dropout's)
    input_size: tuple[int, int]  # (height, width) of the images

    def heatmaps(self, target_classes: list[int]) -> torch.Tensor:
        """XGrad-CAM toward one class per image, shape (batch, height, width) in [0, 1]; callable once."""
        classes = torch.as_tensor(target_classes, device=self.logits.device)
        chosen = self.logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(chosen, self.activations)
        return xgradcam_maps(self.activations.detach(), grads, self.input_size)


class BatchedXGradCam:
    """XGrad-CAM of one model for a whole batch: one forward pass and one backward pass through the head only.

    Agrees with pytorch-grad-cam's `XGradCAM` (tests/test_cam.py checks it), post-processing included, and leaves the
    model without hooks and without parameter gradients.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, images: torch.Tensor, target_classes: list[int]) -> torch.Tensor:
        return self.forward(images).heatmaps(target_classes)

    def forward(self, images: torch.Tensor) -> CamForward:
        self.model.eval()
        captured = []

        def capture(module, inputs, output):
            activations = output.detach().requires_grad_()
            captured.append(activations)
            return activations

        handle = model_target_layer(self.model).register_forward_hook(capture)
        try:
            with _parameters_frozen(self.model), torch.enable_grad():
                features = self.model.forward_features(images)
                pooled = self.model.forward_head(features, pre_logits=True)
                logits = model_classifier(self.model)(pooled)
        finally:
            handle.remove()
        return CamForward(activations=captured[0], logits=logits, pooled=pooled.detach(),
                          input_size=tuple(images.shape[-2:]))


@contextmanager
def _parameters_frozen(model: nn.Module):
    """No parameter needs a gradient for a CAM; frozen, the backbone records no autograd graph at all."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def xgradcam_maps(activations: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's XGrad-CAM arithmetic in the same order, on (batch, channels, h, w) tensors."""
    spatial = (2, 3)
    weights = (grads * activations / (activations.sum(spatial, keepdim=True) + EPSILON)).sum(spatial)
    cam = (weights[:, :, None, None] * activations).sum(1).clamp_min(0)
    cam = _min_max_scale(cam)
    # F.interpolate's bilinear with align_corners=False agrees with cv2.resize's INTER_LINEAR to about 1e-6.
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    # pytorch-grad-cam then averages its target layers, one here, and scales the result again.
    return _min_max_scale(cam)


def _min_max_scale(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / (EPSILON + maps.amax((1, 2), keepdim=True))
