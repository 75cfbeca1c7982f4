"""Bulk upload: a zip or a folder of images (PNG, JPEG, DICOM) into a project, with labels and reference masks.

What an upload holds, by path: a `labels.csv` (`filename,label`) gives image-level labels; any file inside a folder
named `masks` is a reference (ground-truth) mask for the image of the same stem, named `<stem>.png`, `<stem>_mask.png`
or `<stem>_mask_<n>.png` (several are OR-ed); every other file is an image.

Every file is judged on its own: a bad one is reported by name with a reason and the rest still import. Files are
stored under their content hash, never under a name from the archive, so no archive path can escape the media folder.
Zip members are read in capped chunks whatever their headers claim, so neither a large upload nor a zip bomb is ever
held whole in memory.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import re
import sys
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from annotator import dicom
from annotator.models import Image, Job, Project, Study
from annotator.services import MaskError, mask_decode

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg"}
LABELS_FILE = "labels.csv"
MASKS_FOLDER = "masks"
MASK_NAME = re.compile(r"^(?P<stem>.+?)(?:_mask(?:_\d+)?)?$")  # BUSI's names: x.png, x_mask.png, x_mask_1.png
SKIPPED_PREFIXES = ("__MACOSX/",)
EXPORT_INDEX = "index.json"  # our own PNG export's index: its images, masks/ and labels.csv carry everything
READ_CHUNK = 1024**2
RATIO_CHECKED_FROM = 1024**2  # a smaller member cannot hurt, whatever its compression ratio


class UploadError(Exception):
    """A file (or the whole upload) that cannot be used; the message says why."""


@dataclass
class IngestEntry:
    name: str
    read: Callable[[int], bytes]  # read(limit): the file's bytes, or UploadError when unreadable or over limit


@dataclass
class UploadContents:
    images: list[IngestEntry] = field(default_factory=list)
    masks: list[IngestEntry] = field(default_factory=list)
    labels: IngestEntry | None = None
    errors: list[dict] = field(default_factory=list)


def zip_entries(source) -> UploadContents:
    """The files of a zip (a path or a seekable file object, e.g. an upload spooled to disk), checked and sorted
    before anything is stored; no member is read yet."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"not a readable zip archive ({error})") from error
    members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith(SKIPPED_PREFIXES)]
    if len(members) > settings.UPLOAD_MAX_FILES:
        raise UploadError(f"the archive holds {len(members)} files; at most {settings.UPLOAD_MAX_FILES} are accepted")
    return _contents_sort([IngestEntry(m.filename, partial(_member_read, archive, m)) for m in members])


def folder_entries(folder: Path, labels_file: Path | None = None, masks_folder: Path | None = None) -> UploadContents:
    """The files under a server-side folder, subfolders included; a `labels_file` or `masks_folder` given inside it
    is not taken for images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UploadError(f"{folder} is not a folder")
    given_labels = labels_file.resolve() if labels_file else None
    given_masks = masks_folder.resolve() if masks_folder else None
    entries = [
        IngestEntry(str(path.relative_to(folder)), partial(_file_read, path))
        for path in _files_under(folder)
        if path.resolve() != given_labels and (given_masks is None or given_masks not in path.resolve().parents)
    ]
    return contents_extend(_contents_sort(entries), labels_file, masks_folder)


def contents_extend(contents: UploadContents, labels_file: Path | None = None,
                    masks_folder: Path | None = None) -> UploadContents:
    """Labels and masks given beside an upload (server-side paths); the labels file replaces any labels.csv in it."""
    if labels_file is not None:
        if not labels_file.is_file():
            raise UploadError(f"{labels_file} is not a file")
        if contents.labels is not None:
            contents.errors.append({"name": contents.labels.name, "reason": f"not used: labels come from "
                                                                            f"{labels_file.name}"})
        contents.labels = IngestEntry(labels_file.name, partial(_file_read, labels_file))
    if masks_folder is not None:
        if not masks_folder.is_dir():
            raise UploadError(f"{masks_folder} is not a folder")
        contents.masks += [IngestEntry(str(path.relative_to(masks_folder.parent)), partial(_file_read, path))
                           for path in _files_under(masks_folder)]
    return contents


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def _contents_sort(entries: list[IngestEntry]) -> UploadContents:
    contents = UploadContents()
    for entry in entries:
        path = _path_of(entry.name)
        if str(path) == EXPORT_INDEX:
            continue
        if path.name == LABELS_FILE:
            if contents.labels is None:
                contents.labels = entry
            else:
                contents.errors.append({"name": entry.name, "reason": f"not used: labels come from "
                                                                      f"{contents.labels.name}"})
        elif MASKS_FOLDER in (part.lower() for part in path.parts[:-1]):
            contents.masks.append(entry)
        else:
            contents.images.append(entry)
    return contents


def _file_read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise UploadError(f"{size} bytes, over the limit of {limit}")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as error:
        raise UploadError(f"cannot be read ({error})") from error
    if len(data) > limit:
        raise UploadError(f"over the limit of {limit} bytes")
    return data


def _member_read(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, decompressed in chunks and stopped as soon as they pass `limit` or an absurd ratio."""
    if member.file_size > limit:
        raise UploadError(f"{member.file_size} bytes uncompressed, over the limit of {limit}")
    max_ratio = settings.UPLOAD_MAX_COMPRESSION_RATIO
    if member.file_size > max(RATIO_CHECKED_FROM, max_ratio * member.compress_size):
        raise UploadError(f"compressed more than {max_ratio}:1 (possible zip bomb)")
    # zipfile stops at the size the header declares, so a lying header would pass for a short, broken file. A copy
    # that declares no end lets the compressed data itself decide where the member ends; the cap stops the read.
    unbounded = copy.copy(member)
    unbounded.file_size = sys.maxsize
    data = bytearray()
    try:
        with archive.open(unbounded) as stream:
            while chunk := stream.read(min(READ_CHUNK, limit + 1 - len(data))):
                data += chunk
                if len(data) > limit:
                    raise UploadError(f"over the limit of {limit} bytes uncompressed (its header said "
                                      f"{member.file_size}: possible zip bomb)")
                if len(data) > max(RATIO_CHECKED_FROM, max_ratio * member.compress_size):
                    raise UploadError(f"compressed more than {max_ratio}:1 (possible zip bomb)")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as error:
        raise UploadError(f"cannot be read from the archive ({error})") from error
    if len(data) != member.file_size:
        raise UploadError(f"the archive's header says {member.file_size} bytes but the file holds {len(data)} "
                          "(damaged or forged archive)")
    return bytes(data)


def labels_parse(data: bytes) -> dict[str, str]:
    """File name to label; UploadError when the CSV cannot be used at all."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UploadError(f"not UTF-8 text ({error}); no labels were applied") from error
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
        if not {"filename", "label"} <= set(columns):
            raise UploadError(f"needs a header with 'filename' and 'label' columns (found {columns}); "
                              "no labels were applied")
        return {_path_of(row["filename"] or "").name: (row["label"] or "").strip() for row in reader}
    except csv.Error as error:
        raise UploadError(f"not a readable CSV ({error}); no labels were applied") from error


@transaction.atomic
def upload_ingest(project: Project, contents: UploadContents, source_name: str, user=None,
                  label_map: dict[str, str] | None = None,
                  on_image: Callable[[IngestEntry], None] | None = None) -> Job:
    """Store the good images with their labels and reference masks, record the bad files, and queue the ensemble
    over the new images. `label_map` renames labels first (e.g. benign and malignant to lesion); `on_image` is
    called after each image, for progress."""
    from annotator.tasks import job_annotate_task

    job = Job.objects.create(project=project, created_by=user, source_name=source_name)
    errors = list(contents.errors)
    labels = _labels_for(project, contents, label_map or {}, errors)
    masks = _masks_by_stem(contents, errors)
    for entry in contents.images:
        name = _path_of(entry.name)
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
        transaction.on_commit(lambda: job_annotate_task.delay(job.pk))
    return job


def _labels_for(project, contents: UploadContents, label_map: dict[str, str], errors: list[dict]) -> dict[str, str]:
    """The usable labels by file name; a bad CSV or row is reported and its images import unlabelled."""
    if contents.labels is None:
        return {}
    name = contents.labels.name
    try:
        rows = labels_parse(contents.labels.read(settings.IMAGE_MAX_BYTES))
    except UploadError as error:
        errors.append({"name": name, "reason": str(error)})
        return {}
    labels = {file: label_map.get(label, label) for file, label in rows.items()}
    images = {_path_of(e.name).name for e in contents.images}
    errors += [{"name": name, "reason": f"row for {file!r}: no such image in the upload"}
               for file in sorted(set(labels) - images)]
    errors += [{"name": name, "reason": f"label {label!r} is not one of {project.classes}; left unlabelled"}
               for label in sorted({v for v in labels.values() if v and v not in project.classes})]
    return {file: label for file, label in labels.items() if label in project.classes}


def _masks_by_stem(contents: UploadContents, errors: list[dict]) -> dict[str, list[IngestEntry]]:
    """Mask files grouped by the stem of the one image they belong to; the others are reported."""
    image_stems = defaultdict(int)
    for entry in contents.images:
        image_stems[_path_of(entry.name).stem] += 1
    masks = defaultdict(list)
    for entry in contents.masks:
        stem = MASK_NAME.match(_path_of(entry.name).stem)["stem"]
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
    name = _safe_path(entry.name).name
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
            Image.objects.create(
                project=project, study=(picture and _dicom_study(project, picture)) or _upload_study(job), job=job,
                sha256=digest, file=stored_name, width=width, height=height, label=label,
                # Some DICOM exports name files after the patient: a DICOM image is named by its content instead.
                original_name=f"dicom-{digest[:12]}.png" if picture else name,
                reference_mask=_reference_store(reference) if reference else "",
                series_uid=picture.series_uid if picture else "",
                series_description=picture.series_description if picture else "",
                instance_number=picture.instance_number if picture else None,
            )
    except IntegrityError:  # the same content stored by a concurrent upload
        return False
    return True


def _path_of(name: str) -> PurePosixPath:
    return PurePosixPath(name.replace("\\", "/"))  # zips made on Windows may use backslashes


def _safe_path(name: str) -> PurePosixPath:
    path = _path_of(name)
    if path.is_absolute() or ".." in path.parts:
        raise UploadError("unsafe path (absolute or with '..'); skipped")
    return path


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
            _safe_path(entry.name)
            union |= mask_decode(entry.read(settings.IMAGE_MAX_BYTES), size)
        except (UploadError, MaskError) as error:
            errors.append({"name": entry.name, "reason": f"{error}; {image_name} has no reference mask"})
            return None
    buffer = io.BytesIO()
    PILImage.fromarray(union.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


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
