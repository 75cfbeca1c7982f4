"""Which mask version is which: "the latest" is defined here and nowhere else."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, F, OuterRef, Subquery, Window
from django.db.models.functions import RowNumber

from annotator.models import Image, Mask

LATEST_FIRST = ("-version",)


def mask_latest(image: Image, source: str | None = None) -> Mask | None:
    """The image's newest mask version; with `source`, the newest of that source (e.g. the model's proposal)."""
    masks = image.masks.all() if source is None else image.masks.filter(source=source)
    return masks.order_by(*LATEST_FIRST).first()


@dataclass(frozen=True)
class MaskSummary:
    latest: Mask | None  # the newest version, the one the page edits
    latest_of_model: Mask | None  # the newest of the model's (its proposal), drawn as an outline
    versions: int


def mask_summary(image: Image) -> MaskSummary:
    """What the image page shows of its masks, in one query: the newest version of each source, with the count of
    all versions."""
    newest = list(image.masks.annotate(
        rank_in_source=Window(RowNumber(), partition_by=[F("source")], order_by=LATEST_FIRST),
        versions=Window(Count("id")),
    ).filter(rank_in_source=1).order_by(*LATEST_FIRST))
    return MaskSummary(latest=newest[0] if newest else None,
                       latest_of_model=next((m for m in newest if m.source == Mask.Source.MODEL), None),
                       versions=newest[0].versions if newest else 0)


def mask_latest_id() -> Subquery:
    """The id of the latest mask version of each image in a query over images."""
    return Subquery(Mask.objects.filter(image=OuterRef("pk")).order_by(*LATEST_FIRST).values("id")[:1])


def mask_versions(image: Image):
    """Every mask version of the image, oldest first, with what the history page shows of each."""
    return image.masks.select_related("author", "parent", "restored_from").order_by("version")
