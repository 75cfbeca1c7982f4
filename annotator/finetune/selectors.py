"""Reads for fine-tuning: a project's training runs and model versions, and what a run learns from."""
from annotator.models import Image, TrainingRun


def project_training_runs(project):
    return project.training_runs.select_related("base_version", "result", "created_by").order_by("-created_at")


def project_model_versions(project):
    return project.model_versions.select_related("project", "parent").order_by("-created_at")


def training_run_active(project) -> TrainingRun | None:
    return project.training_runs.filter(status__in=TrainingRun.UNFINISHED).order_by("created_at").first()


def images_for_training(project):
    """Approved images with an image-level label: the radiologist's, or the ensemble's that they approved."""
    return (project.images.filter(review_status=Image.ReviewStatus.APPROVED)
            .exclude(reviewed_label="", predicted_label="").select_related("approved_mask").order_by("id"))


def approvals_since_last_run(project) -> int:
    """Images approved since the latest training run was created (all approved images before the first run)."""
    approved = project.images.filter(review_status=Image.ReviewStatus.APPROVED)
    last = project.training_runs.order_by("-created_at").first()
    return (approved.filter(reviewed_at__gt=last.created_at) if last else approved).count()
