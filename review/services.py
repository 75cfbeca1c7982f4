"""A radiologist's decisions on an image; each one is also kept in the audit trail."""
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotator import access
from annotator.finetune.services import training_run_autostart
from annotator.masks.services import mask_latest_lock
from annotator.models import Image, Mask
from annotator.tallies import image_tally_key, image_tally_move
from review import selectors
from review.models import Review

CLAIM_CANDIDATES = 20  # queue heads tried before giving up: each try fails only when another reviewer won it


class ReviewError(ValueError):
    pass


def image_claim_next(reviewer, project=None, skip: int | None = None) -> Image | None:
    """Give the reviewer the first image of the queue that nobody else holds, and hold it for them.

    The claim is a conditional UPDATE, so of two reviewers asking at once only one gets a given image; the other
    moves on to the next. Taking a new image releases the reviewer's earlier claims; `skip` is the image the
    reviewer is moving on from.
    """
    now = timezone.now()
    Image.objects.filter(claimed_by=reviewer).update(claimed_by=None, claim_expires_at=None)
    queue = selectors.review_queue(reviewer, project).filter(project__in=access.projects_reviewable(reviewer))
    if skip is not None:
        queue = queue.exclude(pk=skip)
    candidates = selectors.claimable(queue, reviewer, now)
    for image_id in candidates.values_list("id", flat=True)[:CLAIM_CANDIDATES]:
        won = selectors.claimable(Image.objects.filter(pk=image_id, review_status=Image.ReviewStatus.PENDING),
                                  reviewer, now).update(
            claimed_by=reviewer, claim_expires_at=now + timedelta(minutes=settings.REVIEW_CLAIM_MINUTES),
            last_served_at=now)
        if won:
            return Image.objects.get(pk=image_id)
    return None


@transaction.atomic
def image_approve(image: Image, reviewer, mask: Mask | None = None, comment: str = "", label: str = "",
                  seen_version: int | None = None) -> Image:
    """Approve a mask version of the image (the latest by default), recording who and when, and the radiologist's
    diagnosis when a `label` is given. With `seen_version` (the version the reviewer was shown) the approval is
    refused with StaleMaskError if a newer version was saved meanwhile."""
    image, latest = mask_latest_lock(image, seen_version, lost="nothing was approved")
    _label_check(image, label)
    mask = mask or latest
    if mask is None:
        raise ReviewError("the image has no mask to approve yet")
    if mask.image_id != image.pk:
        raise ReviewError("that mask belongs to another image")
    _status_change(image, Image.ReviewStatus.APPROVED)
    image.approved_mask = mask
    _decision_record(image, reviewer, label)
    Review.objects.create(image=image, reviewer=reviewer, decision=Review.Decision.APPROVED, mask=mask,
                          comment=comment, label=label)
    # Every FINETUNE_EVERY_APPROVALS approvals the ensemble fine-tunes itself on them, once they are committed.
    transaction.on_commit(partial(training_run_autostart, image.project_id))
    return image


@transaction.atomic
def image_reject(image: Image, reviewer, comment: str = "", label: str = "") -> Image:
    """Reject the model's annotation of the image; no mask of it will be exported."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    _label_check(image, label)
    _status_change(image, Image.ReviewStatus.REJECTED)
    image.approved_mask = None
    _decision_record(image, reviewer, label)
    Review.objects.create(image=image, reviewer=reviewer, decision=Review.Decision.REJECTED, comment=comment,
                          label=label)
    return image


@transaction.atomic
def image_requeue(image: Image, reviewer, comment: str = "") -> Image:
    """Send a rejected image back to the review queue. Who rejected it and when stay on the image until the next
    decision, and in the audit trail."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    if image.review_status != Image.ReviewStatus.REJECTED:
        raise ReviewError(f"only a rejected image can go back to the queue; this one is {image.review_status}")
    _status_change(image, Image.ReviewStatus.PENDING)
    image.approved_mask = None
    image.save(update_fields=["review_status", "approved_mask"])
    Review.objects.create(image=image, reviewer=reviewer, decision=Review.Decision.REQUEUED, comment=comment)
    return image


def _label_check(image: Image, label: str) -> None:
    classes = image.project.classes
    if label and label not in classes:
        raise ReviewError(f"{label!r} is not a diagnosis of project {image.project.name}: "
                          f"choose one of {', '.join(classes)}")


def _status_change(image: Image, status: str) -> None:
    """Set the review status of the locked image, and move it to that tally (it is saved by the caller)."""
    before = image_tally_key(image)
    image.review_status = status
    image_tally_move(image, before)


def _decision_record(image: Image, reviewer, label: str) -> None:
    """Who decided, when and, if they gave one, their diagnosis; the decision also ends any claim on the image."""
    if label:
        image.reviewed_label = label
    image.reviewed_by = reviewer
    image.reviewed_at = timezone.now()
    image.claimed_by = None
    image.claim_expires_at = None
    image.save(update_fields=["review_status", "approved_mask", "reviewed_label", "reviewed_by", "reviewed_at",
                              "claimed_by", "claim_expires_at"])
