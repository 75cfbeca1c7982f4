"""Bulk upload: a zip or a folder of images (PNG, JPEG, DICOM) into a project, with labels and reference masks.

Reference masks (in a `masks` folder) belong to the image of the same stem, named `<stem>.png`, `<stem>_mask.png`
or `<stem>_mask_<n>.png` (several are OR-ed). Every file is judged on its own: a bad one is reported by name with a
reason and the rest still import. Files are stored under their content hash, never under a name from the archive, so
no archive path can escape the media folder.
"""
from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from typing import Callable

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from annotator.enqueue import job_annotate_enqueue
from annotator.ingest import dicom
from annotator.ingest.archive import (MASK_NAME, IngestEntry, UploadContents, UploadError, path_of, safe_path,
                                      zip_entries)
from annotator.ingest.labels import labels_for
from annotator.models import Image, Job, Project, Study
from annotator.png import MaskError, mask_decode, png_encode
from annotator.tallies import image_tally_add

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg"}


def upload_receive(project: Project, upload, user) -> Job:
    """An uploaded zip (page or API) into the project; UploadError, saying why, when the upload as a whole cannot be
    used, and then nothing is stored."""
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise UploadError(f"the upload is {upload.size} bytes; the limit is {settings.UPLOAD_MAX_BYTES}")
    try:
        return upload_ingest(project, zip_entries(upload), upload.name, user)
    except UploadError as error:
        raise UploadError(f"{upload.name}: {error}") from error


@transaction.atomic
def upload_ingest(project: Project, contents: UploadContents, source_name: str, user=None,
                  label_map: dict[str, str] | None = None,
                  on_image: Callable[[IngestEntry], None] | None = None) -> Job:
    """Store the good images with their labels and reference masks, record the bad files, and queue the ensemble
    over the new images. `label_map` renames labels first (e.g. benign and malignant to lesion); `on_image` is
    called after each image, for progress."""
    job = Job.objects.create(project=project, created_by=user, source_name=source_name)
    errors = list(contents.errors)
    labels = labels_for(project, contents, label_map or {}, errors)
    masks = _masks_by_stem(contents, errors)
    for entry in contents.images:
        name = path_of(entry.name)
        try:
            created = _image_ingest(project, job, entry, labels.get(name.name, ""), masks.get(name.stem, []),
                                    errors)
        except UploadError as error:
            errors.append({"name": entry.name, "reason": str(error)})
        else:
            if created:
                job.imported += 1
            else:
                job.duplicates += 1
        if on_image is not None:
            on_image(entry)
    job.errors = errors
    if not job.imported:
        job.status = Job.Status.DONE
    job.save()
    if job.imported:
        job_annotate_enqueue(job.pk)
    return job


def _masks_by_stem(contents: UploadContents, errors: list[dict]) -> dict[str, list[IngestEntry]]:
    """Mask files grouped by the stem of the one image they belong to; the others are reported."""
    image_stems = defaultdict(int)
    for entry in contents.images:
        image_stems[path_of(entry.name).stem] += 1
    masks = defaultdict(list)
    for entry in contents.masks:
        stem = MASK_NAME.match(path_of(entry.name).stem)["stem"]
        if image_stems[stem] == 1:
            masks[stem].append(entry)
        elif image_stems[stem] > 1:
            errors.append({"name": entry.name, "reason": f"{image_stems[stem]} images are named {stem!r}; "
                                                         "cannot tell which one this mask belongs to"})
        else:
            errors.append({"name": entry.name, "reason": f"no image named {stem!r} in the upload for this mask"})
    return masks


def _image_ingest(project, job, entry: IngestEntry, label: str, mask_entries: list[IngestEntry],
                  errors: list[dict]) -> bool:
    """Store one image; False when the project already holds the same content (then only a missing label or
    reference mask is added, nothing is replaced)."""
    name = safe_path(entry.name).name
    data = entry.read(settings.IMAGE_MAX_BYTES)
    picture = None
    if dicom.dicom_detect(data, name):
        try:
            picture = dicom.dicom_convert(data, settings.IMAGE_MAX_PIXELS)
        except dicom.DicomError as error:
            raise UploadError(str(error)) from error
        data, width, height, extension = picture.png, picture.width, picture.height, "png"
    else:
        width, height, extension = _image_check(data)
    digest = hashlib.sha256(data).hexdigest()
    reference = _reference_mask_build(mask_entries, (width, height), name, errors)
    existing = Image.objects.filter(project=project, sha256=digest).first()
    if existing is not None:
        _duplicate_complete(existing, entry.name, label, reference, mask_entries, errors)
        return False
    stored_name = f"images/{digest[:2]}/{digest}.{extension}"
    _content_store(stored_name, data)
    try:
        with transaction.atomic():
            image = Image.objects.create(
                project=project, study=(picture and _dicom_study(project, picture)) or _upload_study(job), job=job,
                sha256=digest, file=stored_name, width=width, height=height, label=label,
                # Some DICOM exports name files after the patient: a DICOM image is named by its content instead.
                original_name=f"dicom-{digest[:12]}.png" if picture else name,
                reference_mask=_reference_store(reference) if reference else "",
                series_uid=picture.series_uid if picture else "",
                series_description=picture.series_description if picture else "",
                instance_number=picture.instance_number if picture else None,
            )
            image_tally_add(image)
    except IntegrityError:  # the same content stored by a concurrent upload
        return False
    return True


def _duplicate_complete(image: Image, entry_name: str, label: str, reference: bytes | None,
                        mask_entries: list[IngestEntry], errors: list[dict]) -> None:
    """Fill in what an earlier upload of the same image lacked; what it has is kept, and a conflict is reported."""
    if label and not Image.objects.filter(pk=image.pk, label="").update(label=label) and label != image.label:
        errors.append({"name": entry_name, "reason": f"already in the project as {image.original_name}, labelled "
                                                     f"{image.label!r}; the label {label!r} was not applied"})
    if reference is None:
        return
    stored_name = _reference_name(reference)
    if Image.objects.filter(pk=image.pk, reference_mask="").update(reference_mask=stored_name):
        _content_store(stored_name, reference)
    elif image.reference_mask.name != stored_name:
        errors += [{"name": mask.name, "reason": f"{entry_name} is already in the project as {image.original_name} "
                                                 "with another reference mask; kept that one"}
                   for mask in mask_entries]


def _upload_study(job: Job) -> Study:
    """The upload's own study, for images that do not come from a DICOM study; made once it is needed."""
    if job.study is None:
        job.study = Study.objects.create(project=job.project, name=job.source_name[:200])
        job.save(update_fields=["study"])
    return job.study


def _dicom_study(project, picture: dicom.DicomPicture) -> Study | None:
    if not picture.study_uid:
        return None
    study, _ = Study.objects.get_or_create(project=project, study_uid=picture.study_uid, defaults={
        "name": picture.study_name, "modality": picture.modality, "patient_key": picture.patient_key})
    return study


def _reference_mask_build(mask_entries: list[IngestEntry], size: tuple[int, int], image_name: str,
                          errors: list[dict]) -> bytes | None:
    """The image's masks OR-ed into one 0/255 PNG; None if there are none or any is bad (a partial ground truth
    would be worse than none)."""
    if not mask_entries:
        return None
    union = np.zeros((size[1], size[0]), dtype=bool)
    for entry in mask_entries:
        try:
            safe_path(entry.name)
            union |= mask_decode(entry.read(settings.IMAGE_MAX_BYTES), size)
        except (UploadError, MaskError) as error:
            errors.append({"name": entry.name, "reason": f"{error}; {image_name} has no reference mask"})
            return None
    return png_encode(union)


def _reference_name(png: bytes) -> str:
    digest = hashlib.sha256(png).hexdigest()
    return f"reference/{digest[:2]}/{digest}.png"


def _reference_store(png: bytes) -> str:
    stored_name = _reference_name(png)
    _content_store(stored_name, png)
    return stored_name


def _content_store(stored_name: str, data: bytes) -> None:
    if not default_storage.exists(stored_name):  # content-addressed: the same bytes are stored once
        default_storage.save(stored_name, ContentFile(data))


def _image_check(data: bytes) -> tuple[int, int, str]:
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise UploadError(f"unsupported format {image.format}; PNG, JPEG and DICOM are accepted")
            width, height = image.size
            if width * height > settings.IMAGE_MAX_PIXELS:
                raise UploadError(f"{width}x{height} pixels is over the limit of {settings.IMAGE_MAX_PIXELS} "
                                  "(possible decompression bomb)")
            image.load()
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError("not an image (cannot be decoded as PNG, JPEG or DICOM)")
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as error:
        raise UploadError(f"corrupt or truncated image ({error})")
    return width, height, IMAGE_FORMATS[image.format]
