"""Which mask version is which: "the latest" is defined here and nowhere else."""
from __future__ import annotations

from django.db.models import OuterRef, Subquery

from annotator.models import Image, Mask

LATEST_FIRST = ("-version",)


def mask_latest(image: Image, source: str | None = None) -> Mask | None:
    """The image's newest mask version; with `source`, the newest of that source (e.g. the model's proposal)."""
    masks = image.masks.all() if source is None else image.masks.filter(source=source)
    return masks.order_by(*LATEST_FIRST).first()


def mask_latest_id() -> Subquery:
    """The id of the latest mask version of each image in a query over images."""
    return Subquery(Mask.objects.filter(image=OuterRef("pk")).order_by(*LATEST_FIRST).values("id")[:1])


def mask_versions(image: Image):
    """Every mask version of the image, oldest first, with what the history page shows of each."""
    return image.masks.select_related("author", "parent", "restored_from").order_by("version")
