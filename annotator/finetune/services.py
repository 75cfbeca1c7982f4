"""Fine-tuning a project's ensemble on its approved reviews, the versions that come of it, and which one is in use.

A run trains into a folder of its own attempt under MODELS_DIR/.partial and is moved into place with os.replace only
once it is complete; its ModelVersion row is written in the same transaction that finishes the run. Every status
change a worker makes is conditional on the run still being its attempt, so a worker presumed dead that wakes up
again cannot overwrite the attempt that replaced it.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from PIL import Image as PILImage

from annotator.annotation.services import folder_version
from annotator.enqueue import project_reannotate_enqueue, training_run_enqueue
from annotator.finetune import selectors
from annotator.masks.services import mask_array
from annotator.models import ModelVersion, Project, TrainingRun

log = logging.getLogger(__name__)

# A running run is beaten at least once a batch; one silent this long has lost its worker and may start again.
HEARTBEAT_STALE = timedelta(minutes=5)
PARTIAL_DIR = ".partial"


class TrainingError(ValueError):
    """A run that cannot start or go on; trying again will not help."""


class RunBusy(Exception):
    """The run is RUNNING and its worker beat recently: another worker is on it."""


class _Superseded(Exception):
    """This attempt was taken over by a newer one, or the run is gone."""


class _Cancelled(Exception):
    """Someone asked to cancel the run."""


@transaction.atomic
def training_run_start(project: Project, user=None, trigger: str = "manual") -> TrainingRun:
    """Queue fine-tuning of the project's ensemble on its approved images; refused while one is queued or running."""
    project = Project.objects.select_for_update().get(pk=project.pk)  # one start at a time per project
    active = selectors.training_run_active(project)
    if active is not None:
        raise TrainingError(f"fine-tuning run {active.pk} is {active.status} already; wait for it or cancel it")
    if not selectors.images_for_training(project).exists():
        raise TrainingError("no image of this project is approved yet: fine-tuning learns from approved reviews")
    run = TrainingRun.objects.create(project=project, created_by=user, trigger=trigger,
                                     base_version=project.model_version, message="waiting for a worker")
    training_run_enqueue(run.pk)
    return run


def training_run_autostart(project_id: int) -> TrainingRun | None:
    """Start a run by itself once FINETUNE_EVERY_APPROVALS images were approved since the last run was created."""
    every = settings.FINETUNE_EVERY_APPROVALS
    if every <= 0:
        return None
    project = Project.objects.get(pk=project_id)
    if selectors.approvals_since_last_run(project) < every:
        return None
    try:
        return training_run_start(project, trigger="auto")
    except TrainingError:
        return None  # one is queued or running already; the next approvals count toward the next run


def training_run_cancel(run: TrainingRun) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops at its next batch, keeping nothing."""
    cancelled = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.CANCELLED, cancel_requested=True, finished_at=timezone.now(),
        message="cancelled before it started")
    if not cancelled and not TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
            cancel_requested=True, message="cancelling at the next batch"):
        raise TrainingError(f"run {run.pk} is {TrainingRun.objects.get(pk=run.pk).status}: nothing to cancel")
    return TrainingRun.objects.get(pk=run.pk)


def training_run_fail(run_id: int, reason: str) -> None:
    TrainingRun.objects.filter(pk=run_id, status__in=TrainingRun.UNFINISHED).update(
        status=TrainingRun.Status.FAILED, failure=reason, finished_at=timezone.now(), message="failed")
    _partials_remove(run_id)
    run = TrainingRun.objects.filter(pk=run_id).first()
    folder = _version_folder(run) if run else None
    if folder and folder.exists() and not ModelVersion.objects.filter(folder=str(folder)).exists():
        shutil.rmtree(folder)  # moved into place by an attempt whose transaction then failed


def training_runs_requeue_unfinished() -> int:
    """Send queued and running runs to the workers again, e.g. after the worker was stopped mid-run; a run whose
    worker is in fact alive is left to it."""
    run_ids = list(TrainingRun.objects.filter(status__in=TrainingRun.UNFINISHED).values_list("id", flat=True))
    for run_id in run_ids:
        training_run_enqueue(run_id)
    return len(run_ids)


def training_run_execute(run_id: int) -> None:
    """Fine-tune, judge and store one run. Does nothing for a finished run; starts a run found RUNNING again from
    scratch when its worker has gone silent; raises RunBusy while that worker still beats."""
    run = _run_claim(run_id)
    if run is None:
        return
    partial_folder = _partial_folder(run.pk, run.attempt)
    try:
        _run_train(run, partial_folder)
    except _Cancelled:
        shutil.rmtree(partial_folder, ignore_errors=True)
        TrainingRun.objects.filter(pk=run.pk, attempt=run.attempt).update(
            status=TrainingRun.Status.CANCELLED, finished_at=timezone.now(), message="cancelled; nothing was kept")
    except _Superseded:
        shutil.rmtree(partial_folder, ignore_errors=True)
        log.warning("training run %s: attempt %s was superseded and stopped", run.pk, run.attempt)
    except Exception as error:
        shutil.rmtree(partial_folder, ignore_errors=True)
        # Back to the queue for the task's retry; unless a newer attempt took over, which then carries on.
        released = TrainingRun.objects.filter(pk=run.pk, attempt=run.attempt, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.QUEUED, message=f"attempt {run.attempt} failed: {error}")
        if released:
            raise


@transaction.atomic
def model_version_rollback(project: Project, version: ModelVersion | None, user=None) -> Project:
    """Use an earlier promoted version again, or with None the built-in default (settings.ENSEMBLE_DIR); the
    project's pending images are then annotated again with it."""
    project = Project.objects.select_for_update().get(pk=project.pk)
    if version is not None and version.project_id != project.pk:
        raise TrainingError(f"version {version.name} belongs to another project")
    if version is not None and version.status != ModelVersion.Status.PROMOTED:
        raise TrainingError(f"version {version.name} was not promoted, so it cannot be used: {version.decision}")
    if project.model_version_id == (version.pk if version else None):
        raise TrainingError(f"{version.name if version else 'the built-in default'} is in use already")
    project.model_version = version
    project.save(update_fields=["model_version"])
    log.info("project %s: %s put %s in use", project.pk, user, version.name if version else "the built-in default")
    project_reannotate_enqueue(project.pk)
    return project


def _run_claim(run_id: int) -> TrainingRun | None:
    """QUEUED → RUNNING as a new attempt. A run found RUNNING whose worker went silent starts again as a new attempt
    (its earlier attempts' folders removed); anything else is left alone."""
    now = timezone.now()
    fresh = {"status": TrainingRun.Status.RUNNING, "attempt": F("attempt") + 1, "progress": 0.0, "started_at": now,
             "heartbeat_at": now, "failure": ""}
    if TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(message="starting", **fresh):
        run = TrainingRun.objects.select_related("project").get(pk=run_id)
    else:
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None or run.status != TrainingRun.Status.RUNNING:
            return None  # done, failed or cancelled: a message delivered again
        silent = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - HEARTBEAT_STALE)
        restarted = TrainingRun.objects.filter(silent, pk=run_id, status=TrainingRun.Status.RUNNING,
                                               attempt=run.attempt).update(
            message=f"started again: attempt {run.attempt} stopped without finishing", **fresh)
        if not restarted:
            raise RunBusy(f"training run {run_id} is running on a worker that beat at {run.heartbeat_at}")
        run = TrainingRun.objects.select_related("project").get(pk=run_id)
    _partials_remove(run.pk)
    return run


def _run_train(run: TrainingRun, partial_folder: Path) -> None:
    # Here, not at the top: ml loads torch, which a web process never needs.
    from ml.finetune import FinetuneCancelled, FinetuneConfig, FinetuneError, finetune, promotion_decide

    project = Project.objects.select_related("model_version").get(pk=run.project_id)
    base = project.model_version
    ensemble_dir = base.folder if base else str(settings.ENSEMBLE_DIR)
    TrainingRun.objects.filter(pk=run.pk, attempt=run.attempt).update(base_version=base)
    samples = _samples_load(project)
    _progress(run.pk, run.attempt, 0.0, f"fine-tuning {base.name if base else 'the built-in default'} on "
                                        f"{len(samples)} approved images")
    config = FinetuneConfig(
        epochs=settings.FINETUNE_EPOCHS, learning_rate=settings.FINETUNE_LEARNING_RATE,
        cam_weight=settings.FINETUNE_CAM_WEIGHT, validation_percent=settings.FINETUNE_VALIDATION_PERCENT,
        segmenter_epochs=settings.FINETUNE_SEGMENTER_EPOCHS, refiner_epochs=settings.FINETUNE_REFINER_EPOCHS,
        mc_samples=settings.ML_MC_SAMPLES, device=settings.ML_DEVICE,
        parent_version=base.name if base else folder_version(ensemble_dir))
    try:
        result = finetune(ensemble_dir, samples, partial_folder, config,
                          on_progress=partial(_progress, run.pk, run.attempt),
                          should_stop=partial(_cancel_requested, run.pk, run.attempt))
    except FinetuneCancelled as error:
        raise _Cancelled from error
    except FinetuneError as error:
        raise TrainingError(str(error)) from error
    promote, decision = promotion_decide(result.metrics, result.parent_metrics, config.min_validation_per_class)
    _version_store(run, base, result, promote, decision)


@transaction.atomic
def _version_store(run: TrainingRun, base: ModelVersion | None, result, promote: bool, decision: str) -> None:
    """Move the finished folder into place and record the version, its verdict and the run's end at once."""
    locked = TrainingRun.objects.select_for_update().filter(pk=run.pk).first()
    if locked is None or locked.status != TrainingRun.Status.RUNNING or locked.attempt != run.attempt:
        raise _Superseded
    if locked.cancel_requested:
        raise _Cancelled
    project = Project.objects.select_for_update().get(pk=run.project_id)
    if promote and project.model_version_id != (base.pk if base else None):
        promote = False
        in_use = project.model_version.name if project.model_version else "the built-in default"
        decision = (f"Not promoted: while it trained, {in_use} was put in use, and it was compared with "
                    f"{base.name if base else 'the built-in default'}. {decision}")
    folder = _version_folder(run)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # moved here by an attempt that died before its transaction committed
        shutil.rmtree(folder)
    os.replace(result.folder, folder)
    now = timezone.now()
    version = ModelVersion.objects.create(
        project=project, name=folder.name, folder=str(folder), parent=base, manifest=result.manifest.to_dict(),
        metrics=result.metrics, compared_metrics=result.parent_metrics,
        status=ModelVersion.Status.PROMOTED if promote else ModelVersion.Status.NOT_PROMOTED,
        decision=decision, promoted_at=now if promote else None)
    if promote:
        project.model_version = version
        project.save(update_fields=["model_version"])
        project_reannotate_enqueue(project.pk)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.DONE, result=version, progress=1.0, message=decision, heartbeat_at=now,
        finished_at=now, images_used=result.train_images, masks_used=result.masks_used)
    log.info("training run %s: %s %s", run.pk, folder.name, decision)


def _samples_load(project: Project) -> list:
    """The approved images with their labels, and their approved masks where a disease was outlined."""
    from ml.finetune import FinetuneSample  # torch, for workers only

    disease = set(project.disease_classes)
    samples = []
    for image in selectors.images_for_training(project):
        label = image.reviewed_label or image.predicted_label
        mask = None
        if label in disease and image.approved_mask is not None and image.approved_mask.pixels:
            mask = mask_array(image.approved_mask)
        with image.file.open("rb") as f:
            picture = PILImage.open(io.BytesIO(f.read()))
        samples.append(FinetuneSample(key=image.sha256, image=picture, label=label, mask=mask))
    return samples


def _progress(run_id: int, attempt: int, fraction: float, message: str) -> None:
    """Progress and heartbeat, as long as the run is still this attempt's."""
    if not TrainingRun.objects.filter(pk=run_id, attempt=attempt, status=TrainingRun.Status.RUNNING).update(
            progress=round(fraction, 4), message=message, heartbeat_at=timezone.now()):
        raise _Superseded


def _cancel_requested(run_id: int, attempt: int) -> bool:
    state = TrainingRun.objects.filter(pk=run_id).values_list("cancel_requested", "attempt", "status").first()
    if state is None or state[1] != attempt or state[2] != TrainingRun.Status.RUNNING:
        raise _Superseded
    return state[0]


def _version_folder(run: TrainingRun) -> Path:
    """Where the run's version lives; named after the run, so every attempt of it aims at the same place."""
    return Path(settings.MODELS_DIR) / f"project-{run.project_id}" / f"finetune-{run.pk}"


def _partial_folder(run_id: int, attempt: int) -> Path:
    return Path(settings.MODELS_DIR) / PARTIAL_DIR / f"run-{run_id}-attempt-{attempt}"


def _partials_remove(run_id: int) -> None:
    for folder in (Path(settings.MODELS_DIR) / PARTIAL_DIR).glob(f"run-{run_id}-attempt-*"):
        shutil.rmtree(folder, ignore_errors=True)
