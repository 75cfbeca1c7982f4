"""What the engine's tests check it against, kept out of ml/ since only tests use it: pytorch-grad-cam's own
XGrad-CAM and the pooled features computed the plain way."""
import numpy as np
import torch
from pytorch_grad_cam import XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ml.models import model_target_layer


class XGradCamExplainer:
    """Heatmaps of one model toward a chosen class per image, each min-max scaled into [0, 1], by pytorch-grad-cam."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, images: torch.Tensor, target_classes: list[int]) -> np.ndarray:
        targets = [ClassifierOutputTarget(c) for c in target_classes]
        # The context removes the activation and gradient hooks again, so the model is left as it was found.
        with XGradCAM(model=self.model, target_layers=[model_target_layer(self.model)]) as cam:
            return cam(input_tensor=images, targets=targets).astype(np.float32)


def model_pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pooled features just before the head's dropout, computed once in eval mode."""
    features = model.forward_features(images)
    return model.forward_head(features, pre_logits=True)

