"""Which images and masks an export holds, read in chunks."""
from __future__ import annotations

from itertools import islice
from pathlib import PurePosixPath
from typing import Iterator

from django.db.models import BigIntegerField, Case, F, Q, Value, When

from annotator.export.options import ExportOptions
from annotator.ingest.archive import MASK_NAME, name_cleaned
from annotator.masks.selectors import mask_latest_id
from annotator.models import Image, Mask, Project

CHUNK_SIZE = 500  # images per database round trip
IMAGE_FIELDS = ("id", "original_name", "file", "width", "height", "sha256", "review_status", "model_version",
                "uncertainty", "reviewed_at", "export_reviewer", "export_label", "export_label_source",
                "export_mask_id")
MASK_FIELDS = ("id", "version", "source", "file")


# Where an exported image's label comes from, in order of trust: the radiologist, the upload, the ensemble.
EXPORT_LABEL_SOURCES = (("reviewed", "reviewed_label"), ("upload", "label"), ("predicted", "predicted_label"))


def export_images(project, status, label="", reviewed_from=None, reviewed_to=None):
    """A project's images for an export, in id order, each with `export_label`, `export_label_source` and
    `export_mask_id`: the approved version of an approved image, the latest version of a pending one, none for a
    rejected one (its annotation was turned down), and `export_reviewer` (a username). Dates filter on the day of
    the review decision."""
    images = project.images.filter(review_status=status)
    if status == Image.ReviewStatus.APPROVED:
        images = images.filter(approved_mask__isnull=False)
        mask = F("approved_mask_id")
    elif status == Image.ReviewStatus.PENDING:
        mask = mask_latest_id()
    else:
        mask = Value(None, output_field=BigIntegerField())
    images = images.annotate(
        export_mask_id=mask,
        export_reviewer=F("reviewed_by__username"),
        export_label=Case(*[When(~Q(**{field: ""}), then=F(field)) for _, field in EXPORT_LABEL_SOURCES],
                          default=Value("")),
        export_label_source=Case(*[When(~Q(**{field: ""}), then=Value(source))
                                   for source, field in EXPORT_LABEL_SOURCES], default=Value("")),
    )
    if label:
        images = images.filter(export_label=label)
    if reviewed_from:
        images = images.filter(reviewed_at__date__gte=reviewed_from)
    if reviewed_to:
        images = images.filter(reviewed_at__date__lte=reviewed_to)
    return images.order_by("id")


def class_indices(project: Project) -> dict[str, int]:
    """Each class's COCO category id and index-mask value: its place in the project's classes, from 1 (0 is the
    background)."""
    return {name: position + 1 for position, name in enumerate(project.classes)}


def class_index(project: Project, label: str) -> int:
    """The label's index; for a mask on an image nobody has labelled (drawn before the ensemble ran), the first
    disease class's, since a mask marks a finding."""
    indices = class_indices(project)
    return indices.get(label) or indices[(project.disease_classes or project.classes)[0]]


def export_rows(project: Project, options: ExportOptions) -> Iterator[tuple[tuple, tuple | None, str]]:
    """(image, its exported mask or None, its unique file name), reading CHUNK_SIZE images and their masks per
    round trip. Rows are named tuples of IMAGE_FIELDS and MASK_FIELDS, not model instances: an instance whose file
    was opened is in a reference cycle with its FieldFile, which only the cyclic garbage collector frees, so
    instances would pile up with the number of images exported."""
    images = export_images(project, options.status, options.label, options.reviewed_from, options.reviewed_to)
    rows = images.values_list(*IMAGE_FIELDS, named=True).iterator(chunk_size=CHUNK_SIZE)
    used_stems = set()
    while chunk := list(islice(rows, CHUNK_SIZE)):
        mask_ids = [image.export_mask_id for image in chunk if image.export_mask_id]
        masks = {mask.id: mask for mask in Mask.objects.filter(pk__in=mask_ids).values_list(*MASK_FIELDS, named=True)}
        for image in chunk:
            yield image, masks.get(image.export_mask_id), export_file_name(image, used_stems)


def export_file_name(image, used_stems: set[str]) -> str:
    """The image's own file name with the stored file's extension, unless another exported image has its stem (masks
    are named by stem) or the import would read the stem as a mask's (`x_mask` belongs to `x`): then the image id is
    added. A character the import refuses (stored before it did) becomes `_`, so the export imports again."""
    name = name_cleaned(PurePosixPath(image.original_name.replace("\\", "/")).name)
    path = PurePosixPath(name or f"image-{image.id}")
    stem = path.stem
    while stem in used_stems or MASK_NAME.match(stem)["stem"] != stem:
        stem = f"{stem}-{image.id}"
    used_stems.add(stem)
    return f"{stem}{PurePosixPath(image.file).suffix}"  # what the file holds: a DICOM upload was stored as PNG
