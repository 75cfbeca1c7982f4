"""How many images each project has in each state (annotated or not, review status, flagged or not), kept in
ImageTally rows so that pages count in a few rows instead of reading every image.

Every service that creates an image, deletes one or changes one of those three fields moves it between tallies in
the same transaction, after locking the image row: `key = image_tally_key(image)` before the change,
`image_tally_move(image, key)` after it. `tallies_rebuild` recounts from the images, for data written behind the
services' back (a migration, a bulk seed).
"""
from collections import Counter

from django.db import transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Q, Sum

from annotator.models import Image, ImageTally

TallyKey = tuple[bool, str, bool]  # annotated, review_status, flagged


def image_tally_key(image: Image) -> TallyKey:
    return image.annotated_at is not None, image.review_status, image.flagged


def image_tally_add(image: Image, count: int = 1) -> None:
    """A new image (count 1) or a deleted one (count -1) in its state."""
    _tally_change(image.project_id, image_tally_key(image), count)


def image_tally_move(image: Image, before: TallyKey) -> None:
    """The image's state changed from `before` to what it is now."""
    after = image_tally_key(image)
    if after == before:
        return
    # Rows in a fixed order, so two transactions moving images in opposite directions cannot deadlock.
    for key, count in sorted([(before, -1), (after, 1)]):
        _tally_change(image.project_id, key, count)


@transaction.atomic
def images_delete(images) -> int:
    """Delete the images (a queryset), taking them off their tallies; the number deleted."""
    rows = _states(images.select_for_update())
    for (project_id, key), n in sorted(Counter((row["project_id"], _row_key(row)) for row in rows).items()):
        _tally_change(project_id, key, -n)
    return images.delete()[1].get(Image._meta.label, 0)


def tallies_count(projects, **state) -> int:
    """Images of these projects (a queryset) in the given state, e.g. annotated=True, review_status="pending"."""
    return ImageTally.objects.filter(project__in=projects, **state).aggregate(n=Sum("count"))["n"] or 0


def tallies_by_status(projects, **state) -> dict[str, int]:
    """Images of these projects in the given state, per review status."""
    rows = ImageTally.objects.filter(project__in=projects, **state).values("review_status").annotate(n=Sum("count"))
    return {row["review_status"]: row["n"] for row in rows.order_by()}


def tallies_by_project(projects) -> dict[int, dict[str, int]]:
    """Per project id: its images, flagged ones, annotated ones waiting for a decision, and approved ones, as
    `image_count`, `flagged_count`, `pending_count` and `approved_count`."""
    rows = ImageTally.objects.filter(project__in=projects).values("project_id").annotate(
        image_count=Sum("count"), flagged_count=Sum("count", filter=Q(flagged=True)),
        pending_count=Sum("count", filter=Q(annotated=True, review_status=Image.ReviewStatus.PENDING)),
        approved_count=Sum("count", filter=Q(review_status=Image.ReviewStatus.APPROVED))).order_by()
    return {row.pop("project_id"): {name: n or 0 for name, n in row.items()} for row in rows}


@transaction.atomic
def tallies_rebuild(projects=None) -> None:
    """Recount the tallies of these projects (all by default) from their images."""
    images = Image.objects.all() if projects is None else Image.objects.filter(project__in=projects)
    tallies = ImageTally.objects.all() if projects is None else ImageTally.objects.filter(project__in=projects)
    tallies.delete()
    ImageTally.objects.bulk_create(
        ImageTally(project_id=project_id, annotated=annotated, review_status=review_status, flagged=flagged, count=n)
        for (project_id, (annotated, review_status, flagged)), n in tallies_recount(images).items())


def tallies_recount(images) -> dict[tuple[int, TallyKey], int]:
    """Per project id and state, how many of these images there are: what the tallies should say."""
    return {(row["project_id"], _row_key(row)): row["n"] for row in _states(images).annotate(n=Count("id")).order_by()}


def tallies_kept() -> dict[tuple[int, TallyKey], int]:
    """What the tallies say, in the shape of tallies_recount."""
    return {(tally.project_id, (tally.annotated, tally.review_status, tally.flagged)): tally.count
            for tally in ImageTally.objects.exclude(count=0)}


def _states(images):
    return images.annotate(annotated=ExpressionWrapper(Q(annotated_at__isnull=False), output_field=BooleanField())
                           ).values("project_id", "annotated", "review_status", "flagged")


def _row_key(row: dict) -> TallyKey:
    return row["annotated"], row["review_status"], row["flagged"]


def _tally_change(project_id: int, key: TallyKey, count: int) -> None:
    annotated, review_status, flagged = key
    state = dict(project_id=project_id, annotated=annotated, review_status=review_status, flagged=flagged)
    if not ImageTally.objects.filter(**state).update(count=F("count") + count):
        ImageTally.objects.get_or_create(**state)  # a state the project had no image in yet
        ImageTally.objects.filter(**state).update(count=F("count") + count)
