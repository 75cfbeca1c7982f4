"""The radiologist's pages: the queue and one image with the ensemble's evidence."""
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from annotator import access
from annotator.masks.selectors import mask_latest, mask_summary, mask_versions
from annotator.masks.services import StaleMaskError, mask_restore
from annotator.pages import action_report, form_data, form_errors_text
from annotator.pagination import CountedPaginator
from annotator.png import MaskError
from annotator.projects.selectors import projects_listed
from review import selectors, services
from review.forms import ApproveForm, DecisionForm, NextForm, QueueFilterForm, RestoreForm


QUEUE_PAGE_ROWS = 50


def queue(request):
    form = QueueFilterForm(request.GET)
    if not form.is_valid():  # typed filters: a wrong one is said and left out, the others still apply
        messages.error(request, f"Filter not applied: {form_errors_text(form)}")
    filters = form.cleaned_data
    project = access.project_get(request.user, filters["project"]) if filters.get("project") is not None else None
    images, counts, count, more = selectors.review_listing(
        request.user, timezone.now(), project, status=filters.get("status", ""), label=filters.get("label", ""),
        uncertainty_min=filters.get("min"), uncertainty_max=filters.get("max"), reviewer=filters.get("reviewer", ""))
    page = CountedPaginator(images, QUEUE_PAGE_ROWS, count).get_page(request.GET.get("page"))
    return render(request, "review/queue.html", {
        "images": page.object_list,
        "page": page,
        "count": count,
        "more": more,
        "counts": counts,
        "status_counts": [(name, name.replace("_", " "), counts[name]) for name in selectors.QUEUE_STATUSES],
        "project": project,
        "projects": projects_listed(request.user),
        "filters": request.GET,
    })


@require_POST
def take_next(request):
    """Claim the next image nobody else holds and open it (a POST: claiming changes state)."""
    asked = form_data(NextForm(request.GET))
    project = access.project_get(request.user, asked["project"]) if asked["project"] is not None else None
    image = services.image_claim_next(request.user, project, skip=asked["skip"])
    if image is None:
        messages.info(request, "Nothing waits for review that another reviewer is not already on.")
        return redirect("review-queue")
    return redirect("review-image", pk=image.pk)


def image_review(request, pk):
    image = selectors.image_for_page(request.user, pk)
    masks = mask_summary(image)
    return render(request, "review/image.html", {
        "image": image,
        "predictions": selectors.image_predictions(image),
        "candidate_masks": selectors.image_candidate_masks(image),
        "mask": masks.latest,
        "mask_count": masks.versions,
        "model_mask": masks.latest_of_model,
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


def _decide(request, image, decide, verb, posted, **options):
    try:
        decide(image, request.user, comment=posted["comment"], label=posted["label"], **options)
    except (services.ReviewError, StaleMaskError) as error:
        messages.error(request, str(error))
        return redirect("review-image", pk=image.pk)
    messages.success(request, f"{image.original_name} {verb}.")
    following = services.image_claim_next(request.user, image.project)
    return redirect("review-image", pk=following.pk) if following else redirect("review-queue")


@require_POST
def approve(request, pk):
    image = access.image_for_review(request.user, pk)
    posted = form_data(ApproveForm(request.POST))
    # The page posts the version it showed, so a version saved on top meanwhile is never approved unseen.
    return _decide(request, image, services.image_approve, "approved", posted, seen_version=posted["mask_version"])


@require_POST
def reject(request, pk):
    image = access.image_for_review(request.user, pk)
    return _decide(request, image, services.image_reject, "rejected", form_data(DecisionForm(request.POST)))


@require_POST
def requeue(request, pk):
    image = access.image_for_review(request.user, pk)
    comment = form_data(DecisionForm(request.POST))["comment"]
    action_report(request, lambda: services.image_requeue(image, request.user, comment=comment),
                  (services.ReviewError,), lambda image: f"{image.original_name} is back in the review queue.")
    return redirect("review-image", pk=pk)


@require_POST
def restore(request, pk, version):
    image = access.image_for_review(request.user, pk)
    mask = get_object_or_404(image.masks, version=version)
    parent_version = form_data(RestoreForm(request.POST))["parent_version"]
    action_report(request, lambda: mask_restore(image, mask, request.user, parent_version), (MaskError, StaleMaskError),
                  lambda restored: f"Version {mask.version} restored as version {restored.version}.")
    return redirect("review-image", pk=pk)
