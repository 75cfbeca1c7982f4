"""The weakly supervised annotation engine: plain PyTorch, no Django.

`load_ensemble()` restores a trained ensemble from its checkpoint folder; `annotate()` turns images into
per-model diagnoses, MC-Dropout uncertainty, XGrad-CAM heatmaps and a consensus mask.
"""
from importlib import import_module

from ml.config import AnnotateConfig, EnsembleManifest

_ENSEMBLE_NAMES = ("Ensemble", "ImageAnnotation", "ModelOpinion", "annotate", "load_ensemble", "save_ensemble")

__all__ = ["AnnotateConfig", "EnsembleManifest", *_ENSEMBLE_NAMES]


def __getattr__(name: str):
    """ml.ensemble's names, imported on first use: it loads torch, which `python -m ml split` and --help do without."""
    if name in _ENSEMBLE_NAMES:
        return getattr(import_module("ml.ensemble"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
