"""Monte-Carlo Dropout on the classifier head, and the uncertainty measures drawn from its samples."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mc_dropout_probs(classifier: nn.Module, pooled: torch.Tensor, samples: int, dropout: float,
                     generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities of `samples` stochastic passes, shape (samples, batch, classes), each pass's logits
    divided by `temperature` (see temperature_fit).

    timm's ResNet and EfficientNet heads call `F.dropout(training=...)` rather than an `nn.Dropout` module, so
    toggling modules to train mode would give no randomness; and BatchNorm must stay in eval. Dropout is the only
    stochastic part and sits right before the classifier, so the backbone runs once and only the head is sampled.
    """
    return F.softmax(mc_dropout_logits(classifier, pooled, samples, dropout, generator) / temperature, dim=-1)


def mc_dropout_logits(classifier: nn.Module, pooled: torch.Tensor, samples: int, dropout: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The logits of `samples` stochastic passes through the head, shape (samples, batch, classes)."""
    repeated = pooled.unsqueeze(0).expand(samples, *pooled.shape)
    if dropout > 0:
        keep = torch.rand(repeated.shape, generator=generator, device=pooled.device) >= dropout
        repeated = repeated * keep / (1.0 - dropout)
    return classifier(repeated.reshape(-1, pooled.shape[-1])).reshape(samples, pooled.shape[0], -1)


# Temperatures tried by temperature_fit: log-spaced, from sharpening 4x to softening 8x.
TEMPERATURES = torch.logspace(math.log10(0.25), math.log10(8.0), 121, dtype=torch.float64)


def temperature_fit(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017) of MC-Dropout output: the T whose mean over the passes of
    softmax(logits / T) gives the labelled images the least negative log-likelihood; logits (passes, batch, classes),
    where the passes may be several members' stacked, whose mean is then the ensemble's. A scalar keeps the ranking
    of classes in every pass and changes only how sure the mean says it is, which is what the uncertainty and the
    flags read. A grid (neighbours 3 % apart) rather than gradient descent: the same answer every time."""
    logits = logits.double()
    nll = [float(F.nll_loss(torch.log(F.softmax(logits / t, dim=-1).mean(0).clamp_min(1e-12)), labels))
           for t in TEMPERATURES]
    return round(float(TEMPERATURES[int(torch.tensor(nll).argmin())]), 4)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the last axis, normalised by log(classes) into [0, 1]."""
    classes = probs.shape[-1]
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1) / math.log(classes)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """Epistemic part of the uncertainty (BALD): H[mean] - mean H, normalised; samples (T, batch, classes)."""
    return (entropy(samples.mean(0)) - entropy(samples).mean(0)).clamp_min(0.0)
