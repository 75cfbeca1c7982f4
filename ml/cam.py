"""XGrad-CAM heatmaps (Fu et al. 2020) through pytorch-grad-cam's reference implementation."""
from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ml.models import model_target_layer


class XGradCamExplainer:
    """Heatmaps of one model toward a chosen class per image, each min-max scaled into [0, 1]."""

    def __init__(self, model: nn.Module):
        self.cam = XGradCAM(model=model, target_layers=[model_target_layer(model)])

    def __call__(self, images: torch.Tensor, target_classes: list[int]) -> np.ndarray:
        targets = [ClassifierOutputTarget(c) for c in target_classes]
        return self.cam(input_tensor=images, targets=targets).astype(np.float32)
