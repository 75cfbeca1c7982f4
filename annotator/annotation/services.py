"""The annotation job: running a project's ensemble over an upload's images, or again over its pending images after
the model in use changed, and storing each image's predictions, heatmaps, verdict and first mask version.

A running job has a lease: its worker writes `heartbeat_at` when it claims the job and after every batch, each write
conditional on the value it wrote before. A worker that went silent for JOB_LEASE_SECONDS is taken for dead, and the
job for another worker to take over (the sweep sends it again); should the silent one wake up, its next beat finds
the lease gone and it stops. Images are stored one transaction each and skipped once annotated, so however the job
changes hands no image is annotated twice.
"""
from __future__ import annotations

import hashlib
import io
import logging
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from PIL import Image as PILImage

from annotator.enqueue import job_annotate_enqueue, project_reannotate_enqueue
from annotator.masks.selectors import mask_latest
from annotator.masks.services import mask_create
from annotator.models import CandidateMask, Image, Job, Mask, Prediction, Project
from annotator.png import png_encode
from annotator.tallies import TallyKey, image_tally_key, image_tally_move
from annotator.shutdown import WorkerStopping, worker_stopping

log = logging.getLogger(__name__)


class EnsembleMismatch(ValueError):
    """The configured ensemble cannot annotate this project; retrying will not help."""


class _LeaseLost(Exception):
    """Another worker took the job over: this one was silent too long."""


@lru_cache(maxsize=2)
def ensemble_load(folder: str):
    """The ensemble and its version name, loaded once per worker process."""
    from ml import load_ensemble  # here, not at the top: ml loads torch, which a web process never needs

    return load_ensemble(folder, device=settings.ML_DEVICE), folder_version(folder)


def folder_version(folder) -> str:
    """The version name of a checkpoint folder that no ModelVersion names: folder name and manifest hash."""
    manifest_hash = hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()[:8]
    return f"{Path(folder).name}@{manifest_hash}"


def project_checkpoint_folder(project: Project) -> str:
    """The checkpoint the project uses: its promoted ModelVersion's folder, or settings.ENSEMBLE_DIR while it has
    none."""
    return str(project.model_version.folder if project.model_version else settings.ENSEMBLE_DIR)


def project_ensemble(project: Project):
    """The ensemble the project uses (see project_checkpoint_folder) and the version name its predictions and masks
    record: the ModelVersion's, else the name of the default as it was when loaded."""
    ensemble, loaded_name = ensemble_load(project_checkpoint_folder(project))
    return ensemble, project.model_version.name if project.model_version else loaded_name


def project_version_name(project: Project) -> str:
    return project.model_version.name if project.model_version else folder_version(settings.ENSEMBLE_DIR)


def job_annotate(job_id: int, takeover: bool = False) -> None:
    """Annotate every image of the job that has no annotation yet; safe to run twice or after a crash. Does nothing
    for a finished job, nor for a running one whose worker still beats, unless `takeover`: the job's own message came
    back, so the lease is that of a delivery that ended (the task's retry after a failed attempt, the database maybe
    away for longer than the lease; or the broker's redelivery after the worker died). Once the worker is stopping,
    the job goes back to the queue between batches and is sent again."""
    lease = _job_claim(job_id, takeover)
    if lease is None:
        return
    job = Job.objects.get(pk=job_id)
    pending = list(job.images.filter(annotated_at__isnull=True).order_by("id").values_list("id", flat=True))

    def beat():
        nonlocal lease
        now = timezone.now()
        annotated = job.images.filter(annotated_at__isnull=False).count()
        if not Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, heartbeat_at=lease).update(
                heartbeat_at=now, annotated=annotated):
            raise _LeaseLost
        lease = now

    try:
        model_version = images_annotate(job.project_id, pending, image_annotation_store, after_batch=beat)
    except _LeaseLost:
        log.warning("job %s: taken over by another worker; this one stops", job_id, extra={"job_id": job_id})
        return
    except WorkerStopping:
        # Queued and sent again, rather than left to its lease: the next worker resumes it at once. A failed send
        # is the sweep's, as for any queued job that no message holds.
        if Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, heartbeat_at=lease).update(
                status=Job.Status.QUEUED, heartbeat_at=None):
            job_annotate_enqueue(job_id)
            log.info("job %s: the worker is stopping; sent back to the queue", job_id, extra={"job_id": job_id})
        return
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, heartbeat_at=lease).update(
        status=Job.Status.DONE, finished_at=timezone.now())
    log.info("job %s annotated %d images with %s", job_id, len(pending), model_version, extra={"job_id": job_id})


def job_lease_expired(now: datetime) -> Q:
    """Running jobs whose worker has not beaten for JOB_LEASE_SECONDS, or never did (claimed before jobs had a
    lease): it died or hangs."""
    silent = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - timedelta(seconds=settings.JOB_LEASE_SECONDS))
    return Q(status=Job.Status.RUNNING) & silent


def _job_claim(job_id: int, takeover: bool) -> datetime | None:
    """QUEUED → RUNNING, or RUNNING taken over where its lease expired (or with `takeover`); the heartbeat written,
    which every later write of this worker's is conditional on. None where the job is finished or another worker
    holds it. Both are conditional updates: of two workers that try at once, the second finds the lease fresh."""
    now = timezone.now()
    if Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, started_at=now, heartbeat_at=now):
        return now
    running = Q(status=Job.Status.RUNNING) if takeover else job_lease_expired(now)
    if Job.objects.filter(running, pk=job_id).update(heartbeat_at=now):
        why = "its own message came back" if takeover else "its worker stopped beating"
        log.warning("job %s: taken over: %s", job_id, why, extra={"job_id": job_id})
        return now
    return None  # finished, or running on a worker that beats: a message delivered again, or a spare one


def project_reannotate(project_id: int) -> int:
    """Annotate the project's pending images again with the version it uses now, after a promotion or a rollback;
    approved and rejected images keep what was decided on. Safe to run twice: images already done are skipped. How
    many it went over; 0 where the worker was stopping, the rest sent back to the queue."""
    project = Project.objects.select_related("model_version").get(pk=project_id)
    stale = list(project.images.filter(review_status=Image.ReviewStatus.PENDING, annotated_at__isnull=False)
                 .exclude(model_version=project_version_name(project)).order_by("id").values_list("id", flat=True))
    try:
        model_version = images_annotate(project_id, stale, image_annotation_replace)
    except WorkerStopping:
        project_reannotate_enqueue(project_id)  # the next worker does the rest
        log.info("project %s: the worker is stopping; re-annotation sent back to the queue", project_id)
        return 0
    log.info("project %s: %d pending images annotated again with %s", project_id, len(stale), model_version)
    return len(stale)


def images_annotate(project_id: int, image_ids: list[int], store, after_batch=None) -> str | None:
    """Run the project's ensemble over the images in batches and hand each result to `store(image_id, result,
    model_version)`; the version name used last. The version in use is looked up for every batch, so a promotion or
    rollback meanwhile takes effect at once. Once the worker is stopping, raises WorkerStopping before a batch."""
    from ml import AnnotateConfig, annotate  # torch, for workers only (see ensemble_load)

    model_version = None
    for start in range(0, len(image_ids), settings.ML_BATCH_SIZE):
        if worker_stopping():
            raise WorkerStopping
        images = list(Image.objects.filter(pk__in=image_ids[start:start + settings.ML_BATCH_SIZE]).order_by("id"))
        if not images:
            continue
        project = Project.objects.select_related("model_version").get(pk=project_id)
        ensemble, model_version = project_ensemble(project)
        _check_classes(project, ensemble.manifest)
        config = ensemble.manifest.annotate
        if settings.ML_MC_SAMPLES:
            config = AnnotateConfig(**{**config.__dict__, "mc_samples": settings.ML_MC_SAMPLES})
        pictures = []
        for image in images:
            with image.file.open("rb") as f:
                pictures.append(PILImage.open(io.BytesIO(f.read())))
        results = annotate(ensemble, pictures, config, batch_size=settings.ML_BATCH_SIZE, seed=images[0].pk)
        for image, result in zip(images, results):
            store(image.pk, result, model_version)
        if after_batch is not None:
            after_batch()
    return model_version


def jobs_requeue_unfinished() -> int:
    """Send unfinished jobs to the workers again, e.g. after the worker was stopped mid-job; annotation is
    idempotent, so a job that is in fact still running is not done twice."""
    job_ids = list(Job.objects.filter(status__in=Job.UNFINISHED).values_list("id", flat=True))
    for job_id in job_ids:
        job_annotate_enqueue(job_id)
    return len(job_ids)


def job_fail(job_id: int, reason: str) -> None:
    Job.objects.filter(pk=job_id).update(status=Job.Status.FAILED, failure=reason, finished_at=timezone.now())


def _check_classes(project, manifest) -> None:
    if list(manifest.classes) != list(project.classes) or manifest.healthy_class != project.healthy_class:
        raise EnsembleMismatch(f"the ensemble predicts {manifest.classes} (healthy: {manifest.healthy_class}) but "
                               f"project {project.name!r} uses {project.classes} (healthy: {project.healthy_class})")


@transaction.atomic
def image_annotation_store(image_id: int, result, model_version: str) -> bool:
    """Write one image's predictions, heatmaps and first mask at once; False if it was annotated already."""
    image = Image.objects.select_for_update().get(pk=image_id)
    if image.annotated_at is not None:
        return False
    before = image_tally_key(image)
    _predictions_store(image, result, model_version)
    if not image.masks.exists():  # a radiologist who drew before the ensemble ran keeps the latest version
        mask_create(image, result.mask, Mask.Source.MODEL, model_version=model_version)
    image.annotated_at = timezone.now()
    _verdict_store(image, result, model_version, before)
    return True


@transaction.atomic
def image_annotation_replace(image_id: int, result, model_version: str) -> bool:
    """A pending image annotated again by another model version: its predictions beside the earlier ones, its
    verdict on the image, and its mask as a new version only where the latest is still a model's, so that a
    radiologist's drawing is never buried. False if the image was decided on meanwhile or has this version already."""
    image = Image.objects.select_for_update().get(pk=image_id)
    if (image.review_status != Image.ReviewStatus.PENDING or image.annotated_at is None
            or image.model_version == model_version):
        return False
    before = image_tally_key(image)
    _predictions_store(image, result, model_version)
    latest = mask_latest(image)
    if latest is not None and latest.source == Mask.Source.MODEL:
        mask_create(image, result.mask, Mask.Source.MODEL, parent=latest, model_version=model_version)
    _verdict_store(image, result, model_version, before)
    return True


def _predictions_store(image: Image, result, model_version: str) -> None:
    """One prediction with its heatmap per model. A model that has one of this version already (the image was
    annotated by it before a rollback to it) keeps that one."""
    existing = set(image.predictions.filter(model_version=model_version).values_list("architecture", flat=True))
    for opinion in result.opinions:
        if opinion.architecture in existing:
            continue
        heatmap = np.round(opinion.heatmap * 255).astype(np.uint8)
        prediction = Prediction(
            image=image, architecture=opinion.architecture, model_version=model_version, label=opinion.label,
            agrees=opinion.agrees, probabilities=opinion.probabilities, std=opinion.std, entropy=opinion.entropy,
            mutual_information=opinion.mutual_information, cam_class=result.cam_class,
        )
        prediction.heatmap.save(f"{image.pk}-{opinion.architecture}.png", ContentFile(png_encode(heatmap)), save=False)
        prediction.save()
    _candidate_masks_store(image, result, model_version)


def _candidate_masks_store(image: Image, result, model_version: str) -> None:
    """The consensus and the segmentation member's mask, where the ensemble has a member (without one the consensus
    is the proposal itself)."""
    if result.segmentation_mask is None or image.candidate_masks.filter(model_version=model_version).exists():
        return
    for source, mask in ((CandidateMask.Source.CONSENSUS, result.consensus_mask),
                         (CandidateMask.Source.SEGMENTATION, result.segmentation_mask)):
        candidate = CandidateMask(image=image, model_version=model_version, source=source,
                                  proposed=mask is result.mask)
        candidate.file.save(f"{image.pk}-{source}.png", ContentFile(png_encode(mask.astype(np.uint8) * 255)),
                            save=False)
        candidate.save()


def _verdict_store(image: Image, result, model_version: str, before: TallyKey) -> None:
    """The verdict on the locked image, which was in tally `before`."""
    image.model_version = model_version
    image.predicted_label = result.diagnosis
    image.uncertainty = result.uncertainty
    image.flagged = result.flagged
    image.flag_reason = result.flag_reason
    image.save()
    image_tally_move(image, before)
