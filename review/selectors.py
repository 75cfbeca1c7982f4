"""The review queue: which images wait, in what order, and where each one stands ("in review" is defined here)."""
from django.db.models import BooleanField, ExpressionWrapper, F, Q
from django.shortcuts import get_object_or_404

from annotator import access
from annotator.models import QUEUE_ORDER, Image, Project
from annotator.pagination import count_capped
from annotator.tallies import tallies_by_status, tallies_count
# Where an annotated image stands, by the names the queue page and the dashboard show.
QUEUE_STATUSES = ("pending", "in_review", "approved", "rejected")


QUEUE_ROW_FIELDS = ("original_name", "predicted_label", "uncertainty", "flagged", "flag_reason", "claim_expires_at",
                    "review_status")


def image_in_review(now) -> Q:
    """Pending, and held by a reviewer whose claim has not expired."""
    return Q(review_status=Image.ReviewStatus.PENDING, claim_expires_at__gte=now)


def queue_status_conditions(now) -> dict[str, Q]:
    """One condition per name of QUEUE_STATUSES: they split the annotated images."""
    in_review = image_in_review(now)
    return {
        "pending": Q(review_status=Image.ReviewStatus.PENDING) & ~in_review,
        "in_review": in_review,
        "approved": Q(review_status=Image.ReviewStatus.APPROVED),
        "rejected": Q(review_status=Image.ReviewStatus.REJECTED),
    }


def review_queue(user, project=None):
    """Annotated images waiting for a decision: flagged first, the most uncertain first, then the least recently
    served."""
    images = access.images_visible(user).filter(review_status=Image.ReviewStatus.PENDING, annotated_at__isnull=False)
    if project is not None:
        images = images.filter(project=project)
    return images.order_by(*QUEUE_ORDER)


def review_queue_count(user, project=None) -> int:
    """The number of images of review_queue(user, project), from the tallies."""
    return tallies_count(_projects(user, project), annotated=True, review_status=Image.ReviewStatus.PENDING)


def _projects(user, project=None):
    """The user's projects, or just `project`."""
    return access.projects_visible(user) if project is None else Project.objects.filter(pk=project.pk)


def claimable(images, user, now):
    """Of these images, those no other reviewer holds right now."""
    return images.filter(Q(claimed_by__isnull=True) | Q(claim_expires_at__lt=now) | Q(claimed_by=user))


def queue_counts(user, now, project=None) -> dict[str, int]:
    """The annotated images of the user's projects (or of `project`) per name of QUEUE_STATUSES, from the tallies
    and the few images held right now."""
    projects = _projects(user, project)
    by_status = tallies_by_status(projects, annotated=True)
    in_review = Image.objects.filter(image_in_review(now), project__in=projects, annotated_at__isnull=False).count()
    return {"pending": by_status.get(Image.ReviewStatus.PENDING, 0) - in_review, "in_review": in_review,
            "approved": by_status.get(Image.ReviewStatus.APPROVED, 0),
            "rejected": by_status.get(Image.ReviewStatus.REJECTED, 0)}


def review_listing(user, now, project=None, status="", label="", uncertainty_min=None, uncertainty_max=None,
                   reviewer=""):
    """The queue page's rows, counts per status, the number of rows and whether there are more than that; with no
    status, what still waits (pending and in review). The number comes from the counts unless a filter narrows the
    rows (then it stops at COUNT_CAP)."""
    images = access.images_visible(user).filter(annotated_at__isnull=False)
    if project is not None:
        images = images.filter(project=project)
    counts = queue_counts(user, now, project)
    by_status = queue_status_conditions(now)
    images = images.filter(by_status[status] if status in by_status else Q(review_status=Image.ReviewStatus.PENDING))
    narrowed = bool(label or reviewer) or uncertainty_min is not None or uncertainty_max is not None
    if label:
        images = images.filter(predicted_label=label)
    if uncertainty_min is not None:
        images = images.filter(uncertainty__gte=uncertainty_min)
    if uncertainty_max is not None:
        images = images.filter(uncertainty__lte=uncertainty_max)
    if reviewer:
        images = images.filter(Q(reviewed_by__username=reviewer) | Q(claimed_by__username=reviewer))
    if narrowed:
        count, more = count_capped(images)
    else:
        count, more = counts[status] if status in counts else counts["pending"] + counts["in_review"], False
    # A row is one Image with the few fields it shows and the names it needs, not four model instances.
    images = images.select_related(None).only(*QUEUE_ROW_FIELDS).annotate(
        project_name=F("project__name"), claimed_by_name=F("claimed_by__username"),
        reviewed_by_name=F("reviewed_by__username"),
        in_review=ExpressionWrapper(by_status["in_review"], output_field=BooleanField())).order_by(*QUEUE_ORDER)
    return images, counts, count, more


def image_for_page(user, pk) -> Image:
    """The image with the people its page names (who holds it, who decided), in one query."""
    return get_object_or_404(access.images_visible(user).select_related("claimed_by", "reviewed_by"), pk=pk)


def image_predictions(image: Image) -> list:
    """The evidence of the version whose verdict the image shows (after fine-tuning a pending image has several),
    each with its `rows` of class, probability and spread for the page."""
    predictions = list(image.predictions.filter(model_version=image.model_version))
    for prediction in predictions:
        prediction.rows = [{"name": name, "probability": p, "std": s}
                           for name, p, s in zip(image.project.classes, prediction.probabilities, prediction.std)]
    return predictions


def image_candidate_masks(image: Image) -> list:
    """The consensus and segmentation member's masks of the version whose verdict the image shows, if it has a
    member."""
    return list(image.candidate_masks.filter(model_version=image.model_version))
