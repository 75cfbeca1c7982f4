"""The review queue: which images wait, in what order, and where each one stands ("in review" is defined here)."""
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Q

from annotator import access
from annotator.models import Image

QUEUE_ORDER = ("-flagged", "-uncertainty", F("last_served_at").asc(nulls_first=True), "id")
# Where an annotated image stands, by the names the queue page and the dashboard show.
QUEUE_STATUSES = ("pending", "in_review", "approved", "rejected")


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


def claimable(images, user, now):
    """Of these images, those no other reviewer holds right now."""
    return images.filter(Q(claimed_by__isnull=True) | Q(claim_expires_at__lt=now) | Q(claimed_by=user))


def review_listing(user, now, project=None, status="", label="", uncertainty_min=None, uncertainty_max=None,
                   reviewer=""):
    """The queue page's rows and counts per status; with no status, what still waits (pending and in review)."""
    images = access.images_visible(user).filter(annotated_at__isnull=False)
    if project is not None:
        images = images.filter(project=project)
    by_status = queue_status_conditions(now)
    counts = images.aggregate(**{name: Count("id", filter=condition) for name, condition in by_status.items()})
    images = images.filter(by_status[status] if status in by_status else Q(review_status=Image.ReviewStatus.PENDING))
    if label:
        images = images.filter(predicted_label=label)
    if uncertainty_min is not None:
        images = images.filter(uncertainty__gte=uncertainty_min)
    if uncertainty_max is not None:
        images = images.filter(uncertainty__lte=uncertainty_max)
    if reviewer:
        images = images.filter(Q(reviewed_by__username=reviewer) | Q(claimed_by__username=reviewer))
    images = images.select_related("project", "claimed_by", "reviewed_by").annotate(
        in_review=ExpressionWrapper(by_status["in_review"], output_field=BooleanField())).order_by(*QUEUE_ORDER)
    return images, counts


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
