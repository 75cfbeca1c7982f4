"""The model versions page of a project, admins only: fine-tune, follow and cancel runs, compare and roll back."""
from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotator import access
from annotator.annotation.services import folder_version
from annotator.finetune import selectors, services
from annotator.pages import action_report

RUNS_SHOWN = 20
# What the page compares side by side: (label, metrics key, shown as a percentage)
COMPARED = (("Balanced accuracy", "balanced_accuracy", True), ("Accuracy", "accuracy", True),
            ("Mask IoU (consensus)", "iou", True), ("Held-out images", "images", False),
            ("… with an approved mask", "images_with_mask", False))


def _admin_project(request, pk):
    return access.project_for_admin(request.user, pk, "fine-tune and choose model versions")


def project_models(request, pk):
    project = _admin_project(request, pk)
    versions = list(selectors.project_model_versions(project))
    for version in versions:
        version.rows = [(label, _shown(version.metrics.get(key), percent), _shown(version.compared_metrics.get(key),
                                                                                  percent))
                        for label, key, percent in COMPARED]
    return render(request, "annotator/models.html", {
        "project": project,
        "versions": versions,
        "runs": selectors.project_training_runs(project)[:RUNS_SHOWN],
        "active_run": selectors.training_run_active(project),
        "default_name": folder_version(settings.ENSEMBLE_DIR),
        "approvals_since_last_run": selectors.approvals_since_last_run(project),
        "config": {name.lower(): getattr(settings, f"FINETUNE_{name}") for name in (
            "EVERY_APPROVALS", "EPOCHS", "VALIDATION_PERCENT", "CAM_WEIGHT", "LEARNING_RATE")},
    })


@require_POST
def finetune_start(request, pk):
    project = _admin_project(request, pk)
    try:
        run = services.training_run_start(project, request.user)
    except services.TrainingError as error:
        messages.error(request, f"Not started: {error}.")
    else:
        messages.success(request, f"Fine-tuning run {run.pk} queued.")
    return redirect("project-models", pk=pk)


@require_POST
def training_run_cancel(request, pk, run_pk):
    project = _admin_project(request, pk)
    run = get_object_or_404(project.training_runs, pk=run_pk)
    action_report(request, lambda: services.training_run_cancel(run), (services.TrainingError,),
                  lambda run: f"Run {run.pk}: cancel requested.")
    return redirect("project-models", pk=pk)


@require_POST
def model_version_rollback(request, pk, version_pk=None):
    """Put a promoted version in use again, or with no version the built-in default."""
    project = _admin_project(request, pk)
    version = get_object_or_404(project.model_versions, pk=version_pk) if version_pk is not None else None
    action_report(request, lambda: services.model_version_rollback(project, version, request.user),
                  (services.TrainingError,), lambda _: f"{version.name if version else 'The built-in default'} is in "
                                                       "use now; pending images are being annotated again with it.")
    return redirect("project-models", pk=pk)


def _shown(value, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f} %" if percent else str(value)
