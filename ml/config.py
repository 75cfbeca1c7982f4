"""Configuration of an ensemble, stored beside its weights in `manifest.json`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ARCHITECTURES = ("resnet50", "efficientnet_b0", "densenet121")


@dataclass(frozen=True)
class AnnotateConfig:
    """How an image is annotated; the paper leaves all of these open."""

    mc_samples: int = 20  # T stochastic passes through the dropout head
    dropout: float = 0.3  # p of the MC-Dropout head
    binarize_fraction: float = 0.5  # a heatmap pixel is "on" above this fraction of the map's maximum
    uncertainty_threshold: float = 0.5  # flag above this normalised predictive entropy of the ensemble (0..1)

    def __post_init__(self):
        if self.mc_samples < 1:
            raise ValueError("mc_samples must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if not 0.0 < self.binarize_fraction < 1.0:
            raise ValueError("binarize_fraction must be in (0, 1)")
        if not 0.0 <= self.uncertainty_threshold <= 1.0:
            raise ValueError("uncertainty_threshold must be in [0, 1]")


@dataclass
class EnsembleManifest:
    """Everything needed to rebuild and use a trained ensemble."""

    architectures: list[str]
    classes: list[str]
    healthy_class: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    weights_dtype: str = "float32"  # "int8" stores conv/linear weights quantised per output channel
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.healthy_class not in self.classes:
            raise ValueError(f"healthy class {self.healthy_class!r} is not one of {self.classes}")
        if len(self.classes) < 2:
            raise ValueError("an ensemble needs at least two classes")

    @property
    def disease_classes(self) -> list[int]:
        return [i for i, name in enumerate(self.classes) if name != self.healthy_class]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EnsembleManifest":
        data = dict(data)
        data["annotate"] = AnnotateConfig(**data.get("annotate", {}))
        data["mean"] = tuple(data.get("mean", IMAGENET_MEAN))
        data["std"] = tuple(data.get("std", IMAGENET_STD))
        return cls(**data)
