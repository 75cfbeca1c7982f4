"""Building the ensemble's members with timm and splitting them into backbone and dropout head."""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)


def model_build(arch: str, num_classes: int, dropout: float, pretrained: bool = False,
                weights_file: str | Path | None = None) -> nn.Module:
    """A timm model with a fresh `num_classes` head.

    ImageNet weights come from `weights_file` when given, from timm's hub when `pretrained` (needs internet).
    """
    model = timm.create_model(arch, pretrained=pretrained and weights_file is None, num_classes=num_classes,
                              drop_rate=dropout)
    if weights_file is not None:
        state = timm.models.load_state_dict(str(weights_file))
        classifier_keys = {f"{model.default_cfg['classifier']}.weight", f"{model.default_cfg['classifier']}.bias"}
        state = {k: v for k, v in state.items() if k not in classifier_keys}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - classifier_keys:
            raise ValueError(f"{weights_file} does not fit {arch}: missing {missing}, unexpected {unexpected}")
    return model


def model_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage, whose activations XGrad-CAM explains."""
    if hasattr(model, "layer4"):  # ResNet family
        return model.layer4[-1]
    if hasattr(model, "conv_head"):  # EfficientNet family
        return model.bn2
    if hasattr(model, "features") and hasattr(model.features, "norm5"):  # DenseNet family
        return model.features.norm5
    raise ValueError(f"no known CAM target layer for {type(model).__name__}")


def model_pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pooled features just before the head's dropout, computed once in eval mode."""
    features = model.forward_features(images)
    return model.forward_head(features, pre_logits=True)


def model_classifier(model: nn.Module) -> nn.Module:
    return model.get_classifier()
