"""Running the ensemble over a job's images, and adding mask versions."""
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
from django.db.models import Max
from django.utils import timezone
from PIL import Image as PILImage

from annotator.models import Image, Job, Mask, Prediction, Project

log = logging.getLogger(__name__)


class EnsembleMismatch(ValueError):
    """The configured ensemble cannot annotate this project; retrying will not help."""


class MaskError(ValueError):
    """An uploaded mask that cannot be used."""


class StaleMaskError(Exception):
    """The mask was edited on top of a version that is no longer the latest."""

    def __init__(self, latest_version, lost="your drawing was not saved"):
        self.latest_version = latest_version
        super().__init__(f"the mask has changed since you loaded it: version {latest_version} is now the latest; "
                         f"reload the image to see it, {lost}")


@lru_cache(maxsize=2)
def ensemble_load(folder: str):
    """The ensemble and its version name, loaded once per worker process."""
    from ml import load_ensemble

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
    from ml import AnnotateConfig, annotate

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
    from annotator.tasks import job_annotate_task

    job_ids = list(Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).values_list("id", flat=True))
    for job_id in job_ids:
        transaction.on_commit(lambda job_id=job_id: job_annotate_task.delay(job_id))
    return len(job_ids)


def job_fail(job_id: int, reason: str) -> None:
    Job.objects.filter(pk=job_id).update(status=Job.Status.FAILED, failure=reason, finished_at=timezone.now())


def _check_classes(project, manifest) -> None:
    if list(manifest.classes) != list(project.classes) or manifest.healthy_class != project.healthy_class:
        raise EnsembleMismatch(f"the ensemble predicts {manifest.classes} (healthy: {manifest.healthy_class}) but project "
                         f"{project.name!r} uses {project.classes} (healthy: {project.healthy_class})")


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
    latest = image.masks.order_by("-version").first()
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
        heatmap = PILImage.fromarray(np.round(opinion.heatmap * 255).astype(np.uint8))
        prediction = Prediction(
            image=image, architecture=opinion.architecture, model_version=model_version, label=opinion.label,
            agrees=opinion.agrees, probabilities=opinion.probabilities, std=opinion.std, entropy=opinion.entropy,
            mutual_information=opinion.mutual_information, cam_class=result.cam_class,
        )
        prediction.heatmap.save(f"{image.pk}-{opinion.architecture}.png", _png(heatmap), save=False)
        prediction.save()


def _verdict_store(image: Image, result, model_version: str) -> None:
    image.model_version = model_version
    image.predicted_label = result.diagnosis
    image.uncertainty = result.uncertainty
    image.flagged = result.flagged
    image.flag_reason = result.flag_reason
    image.save()


def mask_create(image: Image, mask: np.ndarray, source: str, author=None, parent: Mask | None = None,
                model_version: str = "", restored_from: Mask | None = None) -> Mask:
    """Add the next version of the image's mask; earlier versions stay as they were."""
    next_version = (image.masks.aggregate(latest=Max("version"))["latest"] or 0) + 1
    record = Mask(image=image, version=next_version, parent=parent, source=source, author=author,
                  model_version=model_version, pixels=int(mask.sum()), restored_from=restored_from)
    record.file.save(f"{image.pk}-v{next_version}.png", _png(PILImage.fromarray(mask.astype(np.uint8) * 255)),
                     save=False)
    record.save()
    return record


def mask_latest_lock(image: Image, parent_version: int | None, lost: str) -> tuple[Image, Mask | None]:
    """Lock the image until the transaction ends and give its latest mask version; raise StaleMaskError (saying
    what was `lost`) if the caller worked on `parent_version` and a newer one was saved meanwhile."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    latest = image.masks.order_by("-version").first()
    if parent_version is not None and (latest.version if latest else 0) != parent_version:  # 0: no mask expected
        raise StaleMaskError(latest.version if latest else None, lost)
    return image, latest


@transaction.atomic
def mask_upload(image: Image, data: bytes, author, parent_version: int | None) -> Mask:
    """A radiologist's mask as a PNG; any non-zero pixel is foreground. Refused if drawn on a stale version."""
    image, latest = mask_latest_lock(image, parent_version, lost="your drawing was not saved")
    mask = mask_decode(data, (image.width, image.height))
    return mask_create(image, mask, Mask.Source.HUMAN, author=author, parent=latest)


@transaction.atomic
def mask_restore(image: Image, mask: Mask, author, parent_version: int | None) -> Mask:
    """Bring back an older version as a new human version on top of the latest; nothing earlier is changed."""
    image, latest = mask_latest_lock(image, parent_version, lost="nothing was restored")
    if mask.image_id != image.pk:
        raise MaskError("that mask belongs to another image")
    if mask == latest:
        raise MaskError(f"version {mask.version} is already the latest")
    return mask_create(image, mask_array(mask), Mask.Source.HUMAN, author=author, parent=latest,
                       restored_from=mask)


def mask_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            if picture.format != "PNG":
                raise MaskError("a mask must be a PNG")
            if picture.size != size:
                raise MaskError(f"the mask is {picture.size[0]}x{picture.size[1]} but the image is {size[0]}x{size[1]}")
            array = np.asarray(picture.convert("RGBA" if "A" in picture.getbands() else "L"))
    except MaskError:
        raise
    except Exception as error:
        raise MaskError(f"not a readable PNG ({error})") from error
    # A drawn mask with transparency marks foreground by alpha; an opaque one by brightness.
    return array[..., 3] > 0 if array.ndim == 3 else array > 0


def mask_array(mask: Mask) -> np.ndarray:
    with mask.file.open("rb") as f:
        return np.asarray(PILImage.open(io.BytesIO(f.read())).convert("L")) > 0


def _png(picture: PILImage.Image) -> ContentFile:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return ContentFile(buffer.getvalue())
