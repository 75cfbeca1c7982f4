"""Adding mask versions: the model's proposal, a radiologist's drawing, an older version restored."""
from __future__ import annotations

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max

from annotator.masks.selectors import mask_latest
from annotator.models import Image, Mask
from annotator.png import MaskError, mask_decode, mask_file_read, png_encode


class StaleMaskError(Exception):
    """The mask was edited on top of a version that is no longer the latest."""

    def __init__(self, latest_version, lost="your drawing was not saved"):
        self.latest_version = latest_version
        super().__init__(f"the mask has changed since you loaded it: version {latest_version} is now the latest; "
                         f"reload the image to see it, {lost}")


def mask_create(image: Image, mask: np.ndarray, source: str, author=None, parent: Mask | None = None,
                model_version: str = "", restored_from: Mask | None = None) -> Mask:
    """Add the next version of the image's mask; earlier versions stay as they were."""
    next_version = (image.masks.aggregate(latest=Max("version"))["latest"] or 0) + 1
    record = Mask(image=image, version=next_version, parent=parent, source=source, author=author,
                  model_version=model_version, pixels=int(mask.sum()), restored_from=restored_from)
    record.file.save(f"{image.pk}-v{next_version}.png", ContentFile(png_encode(mask.astype(bool))), save=False)
    record.save()
    return record


def mask_latest_lock(image: Image, parent_version: int | None, lost: str) -> tuple[Image, Mask | None]:
    """Lock the image until the transaction ends and give its latest mask version; raise StaleMaskError (saying
    what was `lost`) if the caller worked on `parent_version` and a newer one was saved meanwhile."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    latest = mask_latest(image)
    if parent_version is not None and (latest.version if latest else 0) != parent_version:  # 0: no mask expected
        raise StaleMaskError(latest.version if latest else None, lost)
    return image, latest


@transaction.atomic
def mask_upload(image: Image, data: bytes, author, parent_version: int | None) -> Mask:
    """A radiologist's mask as a PNG; any non-zero pixel is foreground. Refused if drawn on a stale version."""
    image, latest = mask_latest_lock(image, parent_version, lost="your drawing was not saved")
    mask = mask_decode(data, (image.width, image.height))
    return mask_create(image, mask, Mask.Source.HUMAN, author=author, parent=latest)


@transaction.atomic
def mask_restore(image: Image, mask: Mask, author, parent_version: int | None) -> Mask:
    """Bring back an older version as a new human version on top of the latest; nothing earlier is changed."""
    image, latest = mask_latest_lock(image, parent_version, lost="nothing was restored")
    if mask.image_id != image.pk:
        raise MaskError("that mask belongs to another image")
    if mask == latest:
        raise MaskError(f"version {mask.version} is already the latest")
    return mask_create(image, mask_array(mask), Mask.Source.HUMAN, author=author, parent=latest,
                       restored_from=mask)


def mask_array(mask: Mask) -> np.ndarray:
    """A stored mask version's pixels, True on the foreground."""
    return mask_file_read(mask.file.name)
