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
        self.model = model

    def __call__(self, images: torch.Tensor, target_classes: list[int]) -> np.ndarray:
        targets = [ClassifierOutputTarget(c) for c in target_classes]
        # The context removes the activation and gradient hooks again, so the model is left as it was found.
        with XGradCAM(model=self.model, target_layers=[model_target_layer(self.model)]) as cam:
            return cam(input_tensor=images, targets=targets).astype(np.float32)
