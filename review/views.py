"""The radiologist's pages: the queue and one image with the ensemble's evidence."""
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotator import selectors
from review import services


def queue(request):
    project = None
    if request.GET.get("project"):
        project = selectors.project_get(request.user, request.GET["project"])
    images = selectors.review_queue(request.user, project)
    return render(request, "review/queue.html", {
        "images": images[:200],
        "count": images.count(),
        "project": project,
        "projects": selectors.projects_visible(request.user),
    })


def image_review(request, pk):
    image = selectors.image_get(request.user, pk)
    predictions = list(image.predictions.all())
    classes = image.project.classes
    for prediction in predictions:
        prediction.rows = [{"name": name, "probability": p, "std": s}
                           for name, p, s in zip(classes, prediction.probabilities, prediction.std)]
    next_image = selectors.review_queue(request.user, image.project).exclude(pk=image.pk).first()
    return render(request, "review/image.html", {
        "image": image,
        "predictions": predictions,
        "mask": selectors.mask_latest(image),
        "model_mask": image.masks.filter(source="model").order_by("version").first(),
        "can_review": selectors.user_can_review(request.user, image.project),
        "next_image": next_image,
        "reviews": image.reviews.select_related("reviewer")[:10],
    })


def _decide(request, pk, decide, verb):
    image = selectors.image_get(request.user, pk)
    if not selectors.user_can_review(request.user, image.project):
        raise PermissionDenied
    try:
        decide(image, request.user, comment=request.POST.get("comment", ""))
    except services.ReviewError as error:
        messages.error(request, str(error))
        return redirect("review-image", pk=pk)
    messages.success(request, f"{image.original_name} {verb}.")
    following = selectors.review_queue(request.user, image.project).first()
    return redirect("review-image", pk=following.pk) if following else redirect("review-queue")


@require_POST
def approve(request, pk):
    return _decide(request, pk, services.image_approve, "approved")


@require_POST
def reject(request, pk):
    return _decide(request, pk, services.image_reject, "rejected")
