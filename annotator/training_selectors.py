"""Reads for fine-tuning: training runs and model versions, through what the user may see."""
from django.shortcuts import get_object_or_404

from annotator.models import Image, ModelVersion, TrainingRun

ACTIVE_STATUSES = (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING)


def training_runs_visible(user):
    runs = TrainingRun.objects.select_related("project", "base_version", "result", "created_by")
    return runs if user.is_staff else runs.filter(project__members=user)


def training_run_get(user, pk) -> TrainingRun:
    return get_object_or_404(training_runs_visible(user), pk=pk)


def model_versions_visible(user):
    versions = ModelVersion.objects.select_related("project", "parent")
    return versions if user.is_staff else versions.filter(project__members=user)


def model_version_get(user, pk) -> ModelVersion:
    return get_object_or_404(model_versions_visible(user), pk=pk)


def project_training_runs(project):
    return project.training_runs.select_related("base_version", "result", "created_by").order_by("-created_at")


def project_model_versions(project):
    return project.model_versions.select_related("project", "parent").order_by("-created_at")


def training_run_active(project) -> TrainingRun | None:
    return project.training_runs.filter(status__in=ACTIVE_STATUSES).order_by("created_at").first()


def images_for_training(project):
    """Approved images with an image-level label: the radiologist's, or the ensemble's that they approved."""
    return (project.images.filter(review_status=Image.ReviewStatus.APPROVED)
            .exclude(reviewed_label="", predicted_label="").select_related("approved_mask").order_by("id"))


def approvals_since_last_run(project) -> int:
    """Images approved since the latest training run was created (all approved images before the first run)."""
    approved = project.images.filter(review_status=Image.ReviewStatus.APPROVED)
    last = project.training_runs.order_by("-created_at").first()
    return (approved.filter(reviewed_at__gt=last.created_at) if last else approved).count()
