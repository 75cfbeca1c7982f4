"""A radiologist's decisions on an image; each one is also kept in the audit trail."""
from django.db import transaction
from django.utils import timezone

from annotator.models import Image, Mask
from review.models import Review


class ReviewError(ValueError):
    pass


@transaction.atomic
def image_approve(image: Image, reviewer, mask: Mask | None = None, comment: str = "") -> Image:
    """Approve a mask version of the image (the latest by default), recording who and when."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    mask = mask or image.masks.order_by("-version").first()
    if mask is None:
        raise ReviewError("the image has no mask to approve yet")
    if mask.image_id != image.pk:
        raise ReviewError("that mask belongs to another image")
    image.review_status = Image.ReviewStatus.APPROVED
    image.approved_mask = mask
    image.reviewed_by = reviewer
    image.reviewed_at = timezone.now()
    image.save(update_fields=["review_status", "approved_mask", "reviewed_by", "reviewed_at"])
    Review.objects.create(image=image, reviewer=reviewer, decision=Review.Decision.APPROVED, mask=mask,
                          comment=comment)
    return image


@transaction.atomic
def image_reject(image: Image, reviewer, comment: str = "") -> Image:
    """Reject the model's annotation of the image; no mask of it will be exported."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    image.review_status = Image.ReviewStatus.REJECTED
    image.approved_mask = None
    image.reviewed_by = reviewer
    image.reviewed_at = timezone.now()
    image.save(update_fields=["review_status", "approved_mask", "reviewed_by", "reviewed_at"])
    Review.objects.create(image=image, reviewer=reviewer, decision=Review.Decision.REJECTED, comment=comment)
    return image
