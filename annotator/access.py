"""Who may see and change what, for pages and the API alike.

Admins (staff) see and change everything. Anyone else sees the projects they are a member of, and what belongs to
them; a project's radiologists may also edit masks and decide on images, its viewers only look. Outsiders get 404
(they may not learn that a project exists), members who lack the role 403. The functions raise Django's Http404 and
PermissionDenied, which DRF answers the same way as the pages do.
"""
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from annotator.models import Image, Job, Membership, ModelVersion, Project, TrainingRun


def visible(user, queryset):
    """The rows of `queryset` (of a model with a `project`) the user may see: all for admins, else those of the
    user's projects."""
    return queryset if user.is_staff else queryset.filter(project__members=user)


def projects_visible(user):
    return Project.objects.all() if user.is_staff else Project.objects.filter(members=user)


def project_get(user, pk) -> Project:
    return get_object_or_404(projects_visible(user), pk=pk)


def images_visible(user):
    return visible(user, Image.objects.select_related("project"))


def image_get(user, pk) -> Image:
    return get_object_or_404(images_visible(user), pk=pk)


def job_get(user, pk) -> Job:
    return get_object_or_404(visible(user, Job.objects.all()), pk=pk)


def training_run_get(user, pk) -> TrainingRun:
    return get_object_or_404(visible(user, TrainingRun.objects.select_related(
        "project", "base_version", "result", "created_by")), pk=pk)


def model_version_get(user, pk) -> ModelVersion:
    return get_object_or_404(visible(user, ModelVersion.objects.select_related("project", "parent")), pk=pk)


def admin_check(user, doing: str) -> None:
    """403 for anyone but an admin, saying that only admins may be `doing` this."""
    if not user.is_staff:
        raise PermissionDenied(f"only admins {doing}")


def project_for_admin(user, pk, doing: str) -> Project:
    """A project only an admin may work on: 404 for outsiders, 403 for its members."""
    project = project_get(user, pk)
    admin_check(user, doing)
    return project


def user_can_review(user, project) -> bool:
    """Admins and the project's radiologists may edit masks and decide; viewers only look."""
    if user.is_staff:
        return True
    return Membership.objects.filter(project=project, user=user, role=Membership.Role.RADIOLOGIST).exists()


def projects_reviewable(user):
    """Projects whose images the user may decide on: all for admins, otherwise those they are a radiologist of."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(membership__user=user, membership__role=Membership.Role.RADIOLOGIST)


def image_for_review(user, pk) -> Image:
    """An image the user may edit and decide on: 404 if they cannot see it, 403 if they may only look."""
    image = image_get(user, pk)
    if not user_can_review(user, image.project):
        raise PermissionDenied("you may view this project but not review it")
    return image
