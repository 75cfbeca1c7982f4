"""Reads for the project pages and API, always through what the user may see (annotator.access)."""
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404

from annotator import access
from annotator.models import Image, Mask
from annotator.tallies import tallies_by_project

# The project page lists what most needs a look first.
PROJECT_IMAGE_ORDER = ("-flagged", "-uncertainty", "id")


def projects_listed(user):
    """The projects the user may see, by name, without counts (for menus and the API)."""
    return access.projects_visible(user).order_by("name")


def projects_with_counts(user) -> list:
    """The projects the user may see, by name, each with its images counted by state (the home page): `image_count`,
    `flagged_count`, `pending_count` (annotated, waiting for a decision), `approved_count`."""
    projects = list(projects_listed(user))
    tallies = tallies_by_project(projects)
    for project in projects:
        counts = tallies.get(project.pk, {})
        for name in ("image_count", "flagged_count", "pending_count", "approved_count"):
            setattr(project, name, counts.get(name, 0))
    return projects


def project_images(project):
    return project.images.select_related("reviewed_by").order_by(*PROJECT_IMAGE_ORDER)


def image_detail_get(user, pk) -> Image:
    """One image with everything its API detail shows, in a fixed number of queries."""
    images = access.images_visible(user).select_related("reviewed_by", "study").prefetch_related(
        "predictions", Prefetch("masks", queryset=Mask.objects.select_related("author", "restored_from")))
    return get_object_or_404(images, pk=pk)
