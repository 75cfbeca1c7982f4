"""The annotation job: running a project's ensemble over an upload's images, or again over its pending images after
the model in use changed, and storing each image's predictions, heatmaps, verdict and first mask version."""
from __future__ import annotations

import hashlib
import io
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from annotator.enqueue import job_annotate_enqueue
from annotator.masks.selectors import mask_latest
from annotator.masks.services import mask_create
from annotator.models import CandidateMask, Image, Job, Mask, Prediction, Project
from annotator.png import png_encode

log = logging.getLogger(__name__)


class EnsembleMismatch(ValueError):
    """The configured ensemble cannot annotate this project; retrying will not help."""


@lru_cache(maxsize=2)
def ensemble_load(folder: str):
    """The ensemble and its version name, loaded once per worker process."""
    from ml import load_ensemble  # here, not at the top: ml loads torch, which a web process never needs

    return load_ensemble(folder, device=settings.ML_DEVICE), folder_version(folder)


def folder_version(folder) -> str:
    """The version name of a checkpoint folder that no ModelVersion names: folder name and manifest hash."""
    manifest_hash = hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()[:8]
    return f"{Path(folder).name}@{manifest_hash}"


def project_ensemble(project: Project):
    """The ensemble the project uses and the version name its predictions and masks record: its promoted
    ModelVersion, or settings.ENSEMBLE_DIR while it has none."""
    if project.model_version is None:
        return ensemble_load(str(settings.ENSEMBLE_DIR))
    ensemble, _ = ensemble_load(project.model_version.folder)
    return ensemble, project.model_version.name


def project_version_name(project: Project) -> str:
    return project.model_version.name if project.model_version else folder_version(settings.ENSEMBLE_DIR)


def job_annotate(job_id: int) -> None:
    """Annotate every image of the job that has no annotation yet; safe to run twice or after a crash."""
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=timezone.now())
    job = Job.objects.get(pk=job_id)
    if not claimed and job.status != Job.Status.RUNNING:
        return  # finished already: a redelivered message
    pending = list(job.images.filter(annotated_at__isnull=True).order_by("id").values_list("id", flat=True))

    def annotated_count():
        Job.objects.filter(pk=job_id).update(annotated=job.images.filter(annotated_at__isnull=False).count())

    model_version = images_annotate(job.project_id, pending, image_annotation_store, after_batch=annotated_count)
    Job.objects.filter(pk=job_id).update(status=Job.Status.DONE, finished_at=timezone.now())
    log.info("job %s annotated %d images with %s", job_id, len(pending), model_version, extra={"job_id": job_id})


def project_reannotate(project_id: int) -> int:
    """Annotate the project's pending images again with the version it uses now, after a promotion or a rollback;
    approved and rejected images keep what was decided on. Safe to run twice: images already done are skipped."""
    project = Project.objects.select_related("model_version").get(pk=project_id)
    stale = list(project.images.filter(review_status=Image.ReviewStatus.PENDING, annotated_at__isnull=False)
                 .exclude(model_version=project_version_name(project)).order_by("id").values_list("id", flat=True))
    model_version = images_annotate(project_id, stale, image_annotation_replace)
    log.info("project %s: %d pending images annotated again with %s", project_id, len(stale), model_version)
    return len(stale)


def images_annotate(project_id: int, image_ids: list[int], store, after_batch=None) -> str | None:
    """Run the project's ensemble over the images in batches and hand each result to `store(image_id, result,
    model_version)`; the version name used last. The version in use is looked up for every batch, so a promotion or
    rollback meanwhile takes effect at once."""
    from ml import AnnotateConfig, annotate  # torch, for workers only (see ensemble_load)

    model_version = None
    for start in range(0, len(image_ids), settings.ML_BATCH_SIZE):
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
    _predictions_store(image, result, model_version)
    if not image.masks.exists():  # a radiologist who drew before the ensemble ran keeps the latest version
        mask_create(image, result.mask, Mask.Source.MODEL, model_version=model_version)
    image.annotated_at = timezone.now()
    _verdict_store(image, result, model_version)
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
    _predictions_store(image, result, model_version)
    latest = mask_latest(image)
    if latest is not None and latest.source == Mask.Source.MODEL:
        mask_create(image, result.mask, Mask.Source.MODEL, parent=latest, model_version=model_version)
    _verdict_store(image, result, model_version)
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


def _verdict_store(image: Image, result, model_version: str) -> None:
    image.model_version = model_version
    image.predicted_label = result.diagnosis
    image.uncertainty = result.uncertainty
    image.flagged = result.flagged
    image.flag_reason = result.flag_reason
    image.save()
