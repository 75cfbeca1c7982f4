"""Reads for the project pages and API, always through what the user may see (annotator.access)."""
from django.db.models import Count, Prefetch, Q
from django.shortcuts import get_object_or_404

from annotator import access
from annotator.models import Image, Mask

# The project page lists what most needs a look first.
PROJECT_IMAGE_ORDER = ("-flagged", "-uncertainty", "id")


def projects_listed(user):
    """The projects the user may see, by name, without counts (for menus and the API)."""
    return access.projects_visible(user).order_by("name")


def projects_with_counts(user):
    """The projects the user may see, by name, with their images counted by state (the home page)."""
    return projects_listed(user).annotate(
        image_count=Count("images", distinct=True),
        pending_count=Count("images", filter=Q(images__review_status=Image.ReviewStatus.PENDING), distinct=True),
        approved_count=Count("images", filter=Q(images__review_status=Image.ReviewStatus.APPROVED), distinct=True),
        flagged_count=Count("images", filter=Q(images__flagged=True), distinct=True),
    )


def project_images(project):
    return project.images.select_related("reviewed_by").order_by(*PROJECT_IMAGE_ORDER)


def image_detail_get(user, pk) -> Image:
    """One image with everything its API detail shows, in a fixed number of queries."""
    images = access.images_visible(user).select_related("reviewed_by", "study").prefetch_related(
        "predictions", Prefetch("masks", queryset=Mask.objects.select_related("author", "restored_from")))
    return get_object_or_404(images, pk=pk)
