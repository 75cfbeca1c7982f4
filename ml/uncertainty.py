"""Monte-Carlo Dropout on the classifier head, and the uncertainty measures drawn from its samples."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mc_dropout_probs(classifier: nn.Module, pooled: torch.Tensor, samples: int, dropout: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Class probabilities of `samples` stochastic passes, shape (samples, batch, classes).

    timm's ResNet and EfficientNet heads call `F.dropout(training=...)` rather than an `nn.Dropout` module, so
    toggling modules to train mode would give no randomness; and BatchNorm must stay in eval. Dropout is the only
    stochastic part and sits right before the classifier, so the backbone runs once and only the head is sampled.
    """
    repeated = pooled.unsqueeze(0).expand(samples, *pooled.shape)
    if dropout > 0:
        keep = torch.rand(repeated.shape, generator=generator, device=pooled.device) >= dropout
        repeated = repeated * keep / (1.0 - dropout)
    logits = classifier(repeated.reshape(-1, pooled.shape[-1]))
    return F.softmax(logits, dim=-1).reshape(samples, pooled.shape[0], -1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the last axis, normalised by log(classes) into [0, 1]."""
    classes = probs.shape[-1]
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1) / math.log(classes)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """Epistemic part of the uncertainty (BALD): H[mean] - mean H, normalised; samples (T, batch, classes)."""
    return (entropy(samples.mean(0)) - entropy(samples).mean(0)).clamp_min(0.0)
