"""Correcting a mask with clicks: the mask drawn so far redrawn around a radiologist's clicks ("lesion here", "not
lesion") by the engine's `mask_refine` (ml/interactive.py): with the learned click refiner of the project's
checkpoint where it has one, else with GrabCut. Nothing is stored: the editor shows the answer as one ordinary
edit, and saving it is a mask upload like any drawing.

It runs in the web process, not in a Celery worker: a click wants its answer in a fraction of a second, and a
broker round trip, and a queue behind annotation jobs that take minutes, would break that. The work is small: the
refiner is a 3-million-parameter network run once on a 160 px crop on the CPU, and GrabCut runs at 160 px too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from django.conf import settings
from django.db import connection
from PIL import Image as PILImage

from annotator.annotation.services import project_checkpoint_folder
from annotator.models import Image, Project
from annotator.png import mask_decode, png_encode

LEARNED, GRABCUT = "learned", "grabcut"  # which refiner answered

log = logging.getLogger(__name__)


class ClicksError(ValueError):
    """Clicks that cannot be used on this image."""


@dataclass(frozen=True)
class RefinedMask:
    png: bytes  # a mask PNG of 0 and 255, as the mask endpoints serve
    refiner: str  # LEARNED or GRABCUT


@lru_cache(maxsize=4)
def refiner_cached(folder: str):
    """A checkpoint folder's click refiner, None where it has none, loaded once per web process, on the CPU: the
    web server has no GPU to count on, and one small forward pass needs none."""
    from ml.interactive import refiner_load  # torch: only once a refinement is asked for (see ensemble_load)

    return refiner_load(folder, device="cpu")


def project_refiner(project: Project):
    """The click refiner of the checkpoint the project uses."""
    return refiner_cached(project_checkpoint_folder(project))


def refiners_warm() -> None:
    """Load the click refiner of every checkpoint in use and refine once with it, so that a radiologist's first
    click answers as fast as the others: without this, the first refinement in each web process waits about 4 s
    for torch to import and the checkpoint to load. The web server runs it beside its first requests, at start."""
    from ml.interactive import Click, mask_refine

    try:
        projects = Project.objects.select_related("model_version")
        folders = {str(settings.ENSEMBLE_DIR)} | {project_checkpoint_folder(project) for project in projects}
    finally:
        connection.close()  # this thread's own connection, which no request will reuse
    for folder in sorted(folders):
        try:
            mask_refine(np.zeros((64, 64), np.uint8), np.zeros((64, 64), bool), [Click(32, 32, True)],
                        refiner_cached(folder))
        except Exception:  # a broken checkpoint shows on its project's clicks; the server must start anyway
            log.exception("the click refiner of %s could not be loaded", folder)


def image_gray(image: Image) -> np.ndarray:
    """The image's grayscale pixels (read-only), decoded once per web process for all the clicks on it: a stored
    image file never changes, and decoding a 4096² scan costs more than the refinement itself."""
    return file_gray_cached(image.file.storage, image.file.name)


@lru_cache(maxsize=4)  # a radiologist clicks on one image at a time; 4 grayscale mammograms are 4 × 13 MB
def file_gray_cached(storage, name: str) -> np.ndarray:
    with storage.open(name, "rb") as f:
        gray = np.asarray(PILImage.open(f).convert("L"))
    gray.flags.writeable = False
    return gray


def image_mask_refine(image: Image, mask_png: bytes | None, clicks: list[dict]) -> RefinedMask:
    """The mask `mask_png` (None: empty) redrawn after the clicks, each {"x", "y", "positive"} in image pixels.
    MaskError for a mask that cannot be used (as for a mask upload), ClicksError for clicks that cannot."""
    from ml.interactive import Click, clicks_check, mask_refine

    mask = (mask_decode(mask_png, (image.width, image.height)) if mask_png is not None
            else np.zeros((image.height, image.width), dtype=bool))
    clicks = [Click(float(c["x"]), float(c["y"]), bool(c["positive"])) for c in clicks]
    try:
        clicks_check(clicks, image.width, image.height)
    except ValueError as error:
        raise ClicksError(str(error)) from error
    refiner = project_refiner(image.project)
    refined = mask_refine(image_gray(image), mask, clicks, refiner)
    return RefinedMask(png_encode(refined), LEARNED if refiner is not None else GRABCUT)
