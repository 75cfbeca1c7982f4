"""The weakly supervised annotation engine: plain PyTorch, no Django.

`load_ensemble()` restores a trained ensemble from its checkpoint folder; `annotate()` turns images into
per-model diagnoses, MC-Dropout uncertainty, XGrad-CAM heatmaps and a consensus mask.
"""
from ml.config import AnnotateConfig, EnsembleManifest
from ml.ensemble import Ensemble, ImageAnnotation, ModelOpinion, annotate, load_ensemble, save_ensemble

__all__ = [
    "AnnotateConfig",
    "Ensemble",
    "EnsembleManifest",
    "ImageAnnotation",
    "ModelOpinion",
    "annotate",
    "load_ensemble",
    "save_ensemble",
]
