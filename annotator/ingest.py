"""Bulk upload: a zip or a folder of PNG/JPEG images, optionally with a labels.csv, into a project.

Every file is judged on its own: a bad one is reported by name with a reason and the rest still import. Files are
stored under their content hash, never under a name from the archive, so no archive path can escape the media folder.
"""
from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from annotator.models import Image, Job, Project, Study

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg"}
LABELS_FILE = "labels.csv"
SKIPPED_PREFIXES = ("__MACOSX/",)


class UploadError(Exception):
    """The upload as a whole cannot be used; nothing was stored."""


@dataclass
class IngestEntry:
    name: str
    size: int
    read: Callable[[int], bytes]  # read(limit) returns at most limit bytes


def zip_entries(source) -> tuple[list[IngestEntry], bytes | None]:
    """The files of a zip (path or file object) and its labels.csv, checked before anything is stored."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"not a readable zip archive ({error})") from error
    members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith(SKIPPED_PREFIXES)]
    if len(members) > settings.UPLOAD_MAX_FILES:
        raise UploadError(f"the archive holds {len(members)} files; at most {settings.UPLOAD_MAX_FILES} are accepted")
    labels = None
    entries = []
    for member in members:
        if PurePosixPath(member.filename).name == LABELS_FILE:
            labels = _read_capped(lambda limit, m=member: archive.open(m).read(limit), settings.IMAGE_MAX_BYTES,
                                  LABELS_FILE)
            continue
        entries.append(IngestEntry(member.filename, member.file_size,
                                   lambda limit, m=member: archive.open(m).read(limit)))
    return entries, labels


def folder_entries(folder: Path) -> tuple[list[IngestEntry], bytes | None]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UploadError(f"{folder} is not a folder")
    labels_path = folder / LABELS_FILE
    labels = labels_path.read_bytes() if labels_path.is_file() else None
    entries = [
        IngestEntry(str(path.relative_to(folder)), path.stat().st_size, lambda limit, p=path: _file_read(p, limit))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LABELS_FILE and not path.is_symlink()
    ]
    return entries, labels


def _file_read(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        return f.read(limit)


def labels_parse(data: bytes | None) -> dict[str, str]:
    """File name to label; a CSV without filename and label columns rejects the whole upload."""
    if data is None:
        return {}
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as error:
        raise UploadError(f"{LABELS_FILE} is not a readable UTF-8 CSV ({error})") from error
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise UploadError(f"{LABELS_FILE} needs a header with 'filename' and 'label' columns")
    return {PurePosixPath(row["filename"] or "").name: (row["label"] or "").strip() for row in rows}


@transaction.atomic
def upload_ingest(project: Project, entries: list[IngestEntry], labels_csv: bytes | None, source_name: str,
                  user=None) -> Job:
    """Store the good images as a new study, record the bad ones, and queue the ensemble over the new images."""
    from annotator.tasks import job_annotate_task

    labels = labels_parse(labels_csv)
    study = Study.objects.create(project=project, name=source_name)
    job = Job.objects.create(project=project, study=study, created_by=user, source_name=source_name)
    errors = []
    for entry in entries:
        try:
            created = _image_ingest(project, study, job, entry, labels)
        except UploadError as error:
            errors.append({"name": entry.name, "reason": str(error)})
            continue
        if created:
            job.imported += 1
        else:
            job.duplicates += 1
    unknown = sorted(set(labels) - {PurePosixPath(e.name).name for e in entries})
    errors += [{"name": LABELS_FILE, "reason": f"row for {name!r}: no such image in the upload"} for name in unknown]
    bad_labels = sorted({v for v in labels.values() if v and v not in project.classes})
    errors += [{"name": LABELS_FILE, "reason": f"label {v!r} is not one of {project.classes}; left unlabelled"}
               for v in bad_labels]
    job.errors = errors
    if not job.imported:
        job.status = Job.Status.DONE
    job.save()
    if job.imported:
        transaction.on_commit(lambda: job_annotate_task.delay(job.pk))
    return job


def _image_ingest(project, study, job, entry: IngestEntry, labels: dict[str, str]) -> bool:
    """Store one image; False when the project already holds the same content."""
    path = PurePosixPath(entry.name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise UploadError("unsafe path (absolute or with '..'); skipped")
    data = _read_capped(entry.read, settings.IMAGE_MAX_BYTES, entry.name, entry.size)
    width, height, extension = _image_check(data)
    digest = hashlib.sha256(data).hexdigest()
    if Image.objects.filter(project=project, sha256=digest).exists():
        return False
    stored_name = f"images/{digest[:2]}/{digest}.{extension}"
    if not default_storage.exists(stored_name):  # the same content in another project is stored once
        default_storage.save(stored_name, ContentFile(data))
    label = labels.get(path.name, "")
    try:
        with transaction.atomic():
            Image.objects.create(
                project=project, study=study, job=job, sha256=digest, file=stored_name, original_name=path.name,
                width=width, height=height, label=label if label in project.classes else "",
            )
    except IntegrityError:  # the same content earlier in this very upload, or a concurrent one
        return False
    return True


def _read_capped(read, limit: int, name: str, declared: int = 0) -> bytes:
    """Read at most `limit` bytes: declared sizes in a zip can lie, so the read itself is capped."""
    if declared > limit:
        raise UploadError(f"{declared} bytes uncompressed, over the limit of {limit}")
    try:
        data = read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UploadError(f"cannot be read from the archive ({error})") from error
    if len(data) > limit:
        raise UploadError(f"over the limit of {limit} bytes uncompressed")
    return data


def _image_check(data: bytes) -> tuple[int, int, str]:
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise UploadError(f"unsupported format {image.format}; PNG and JPEG are accepted")
            width, height = image.size
            if width * height > settings.IMAGE_MAX_PIXELS:
                raise UploadError(f"{width}x{height} pixels is over the limit of {settings.IMAGE_MAX_PIXELS} "
                                  "(possible decompression bomb)")
            image.load()
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError("not an image (cannot be decoded as PNG or JPEG)")
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as error:
        raise UploadError(f"corrupt or truncated image ({error})")
    return width, height, IMAGE_FORMATS[image.format]
