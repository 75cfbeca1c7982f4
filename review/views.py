"""The radiologist's pages: the queue and one image with the ensemble's evidence."""
from django.contrib import messages
from django.core.exceptions import BadRequest
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from annotator import access
from annotator.masks.selectors import mask_latest, mask_versions
from annotator.masks.services import StaleMaskError, mask_restore
from annotator.models import Mask
from annotator.pages import action_report
from annotator.png import MaskError
from annotator.projects.selectors import projects_listed
from review import selectors, services


QUEUE_PAGE_ROWS = 50


def queue(request):
    project = None
    if request.GET.get("project"):
        project = access.project_get(request.user, request.GET["project"])
    images, counts = selectors.review_listing(
        request.user, timezone.now(), project, status=request.GET.get("status", ""),
        label=request.GET.get("label", ""), uncertainty_min=_number(request.GET.get("min")),
        uncertainty_max=_number(request.GET.get("max")), reviewer=request.GET.get("reviewer", ""))
    page = Paginator(images, QUEUE_PAGE_ROWS).get_page(request.GET.get("page"))
    return render(request, "review/queue.html", {
        "images": page.object_list,
        "page": page,
        "count": page.paginator.count,
        "counts": counts,
        "status_counts": [(name, name.replace("_", " "), counts[name]) for name in selectors.QUEUE_STATUSES],
        "project": project,
        "projects": projects_listed(request.user),
        "filters": request.GET,
    })


def _is_number(text) -> bool:
    """Digits that int() reads: str.isdigit() also accepts the likes of "²"."""
    return bool(text) and text.isascii() and text.isdigit()


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@require_POST
def take_next(request):
    """Claim the next image nobody else holds and open it (a POST: claiming changes state)."""
    project = None
    if request.GET.get("project"):
        project = access.project_get(request.user, request.GET["project"])
    skip = request.GET.get("skip")
    image = services.image_claim_next(request.user, project, skip=int(skip) if _is_number(skip) else None)
    if image is None:
        messages.info(request, "Nothing waits for review that another reviewer is not already on.")
        return redirect("review-queue")
    return redirect("review-image", pk=image.pk)


def image_review(request, pk):
    image = access.image_get(request.user, pk)
    return render(request, "review/image.html", {
        "image": image,
        "predictions": selectors.image_predictions(image),
        "candidate_masks": selectors.image_candidate_masks(image),
        "mask": mask_latest(image),
        "mask_count": image.masks.count(),
        "model_mask": mask_latest(image, source=Mask.Source.MODEL),
        "can_review": access.user_can_review(request.user, image.project),
        "diagnosis": image.reviewed_label or image.predicted_label,
        "reviews": image.reviews.select_related("reviewer", "mask")[:10],
    })


def image_history(request, pk):
    image = access.image_get(request.user, pk)
    return render(request, "review/history.html", {
        "image": image,
        "masks": mask_versions(image),
        "latest": mask_latest(image),
        "can_review": access.user_can_review(request.user, image.project),
    })


def _posted_version(request, name):
    """A version number from the form, or None when the form has none."""
    text = request.POST.get(name, "")
    if not text:
        return None
    if not _is_number(text):
        raise BadRequest(f"{name} must be a version number")
    return int(text)


def _decide(request, pk, decide, verb, **options):
    image = access.image_for_review(request.user, pk)
    try:
        decide(image, request.user, comment=request.POST.get("comment", ""), label=request.POST.get("label", ""),
               **options)
    except (services.ReviewError, StaleMaskError) as error:
        messages.error(request, str(error))
        return redirect("review-image", pk=pk)
    messages.success(request, f"{image.original_name} {verb}.")
    following = services.image_claim_next(request.user, image.project)
    return redirect("review-image", pk=following.pk) if following else redirect("review-queue")


@require_POST
def approve(request, pk):
    # The page posts the version it showed, so a version saved on top meanwhile is never approved unseen.
    return _decide(request, pk, services.image_approve, "approved",
                   seen_version=_posted_version(request, "mask_version"))


@require_POST
def reject(request, pk):
    return _decide(request, pk, services.image_reject, "rejected")


@require_POST
def requeue(request, pk):
    image = access.image_for_review(request.user, pk)
    action_report(request, lambda: services.image_requeue(image, request.user, comment=request.POST.get("comment", "")),
                  (services.ReviewError,), lambda image: f"{image.original_name} is back in the review queue.")
    return redirect("review-image", pk=pk)


@require_POST
def restore(request, pk, version):
    image = access.image_for_review(request.user, pk)
    mask = get_object_or_404(image.masks, version=version)
    parent_version = _posted_version(request, "parent_version")
    action_report(request, lambda: mask_restore(image, mask, request.user, parent_version), (MaskError, StaleMaskError),
                  lambda restored: f"Version {mask.version} restored as version {restored.version}.")
    return redirect("review-image", pk=pk)
