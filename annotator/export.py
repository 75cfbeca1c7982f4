"""Masks out of the tool, streamed into a file: COCO JSON (RLE, or polygons) and a dataset zip that imports again.

Neither export holds the whole data set in memory: images are read from the database in chunks, one mask is
decoded at a time, and JSON arrays are written item by item (COCO's annotations go to a temporary file while the
images array is written, then are copied after it). What does grow with the number of images is small: the set of
exported file names, and the zip's central directory, which zipfile keeps until it writes it at the end.

Which images and masks (`ExportOptions.status`): approved images with their approved mask (the default); pending
images with their latest mask version, the model's proposal or a draft nobody has approved; rejected images with no
mask, since their annotation was turned down. An image's label is the radiologist's diagnosis, else the label given
with the upload, else the ensemble's (`selectors.EXPORT_LABEL_SOURCES`).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import date
from itertools import islice
from pathlib import PurePosixPath
from typing import BinaryIO, Iterator, TextIO

import cv2
import numpy as np
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image as PILImage
from pycocotools import mask as coco_mask

from annotator import ingest, selectors
from annotator.models import Image, Mask, Project

CHUNK_SIZE = 500  # images per database round trip
IMAGE_FIELDS = ("id", "original_name", "file", "width", "height", "sha256", "review_status", "model_version",
                "uncertainty", "reviewed_at", "export_reviewer", "export_label", "export_label_source",
                "export_mask_id")
MASK_FIELDS = ("id", "version", "source", "file")
SEGMENTATIONS = ("rle", "polygon")
MASK_VALUES = ("binary", "index")
STATUSES = tuple(Image.ReviewStatus.values)
# Largest distance of a simplified polygon from the traced outline, in pixels: well under a pixel keeps the
# rasterised polygon within a few boundary pixels of the mask while dropping most staircase corners.
POLYGON_TOLERANCE = 0.5


class ExportOptionsError(ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))


@dataclass(frozen=True)
class ExportOptions:
    status: str = Image.ReviewStatus.APPROVED
    label: str = ""
    reviewed_from: date | None = None
    reviewed_to: date | None = None
    segmentation: str = "rle"  # COCO only
    values: str = "binary"  # dataset zip only: 0/255, or the class index of the image's label

    def filters(self) -> dict:
        return {"status": self.status, "label": self.label or None,
                "reviewed_from": self.reviewed_from and self.reviewed_from.isoformat(),
                "reviewed_to": self.reviewed_to and self.reviewed_to.isoformat()}


def export_options_parse(params, project: Project) -> ExportOptions:
    """Options from query parameters (`status`, `label`, `reviewed_from`, `reviewed_to`, `format`, `values`);
    empty ones take the default. Every bad one is named in ExportOptionsError."""
    errors = {}

    def choice(name, choices, default):
        value = params.get(name) or default
        if value not in choices:
            errors[name] = f"one of {', '.join(choices)}"
        return value

    def day(name):
        try:
            return date.fromisoformat(params[name]) if params.get(name) else None
        except ValueError:
            errors[name] = "a date as YYYY-MM-DD"
            return None

    label = params.get("label") or ""
    if label and label not in project.classes:
        errors["label"] = f"one of the project's classes: {', '.join(project.classes)}"
    options = ExportOptions(status=choice("status", STATUSES, Image.ReviewStatus.APPROVED), label=label,
                            reviewed_from=day("reviewed_from"), reviewed_to=day("reviewed_to"),
                            segmentation=choice("format", SEGMENTATIONS, "rle"),
                            values=choice("values", MASK_VALUES, "binary"))
    if errors:
        raise ExportOptionsError(errors)
    return options


def coco_export_write(project: Project, options: ExportOptions, target: BinaryIO) -> None:
    """COCO JSON into `target`: one image per exported image, one annotation per non-empty mask, categories from
    the project's classes (ids as in `class_indices`). RLE is the exact mask; polygons are its traced outlines."""
    out = io.TextIOWrapper(target, encoding="utf-8", newline="\n")
    categories = [{"id": index, "name": name, "supercategory": "diagnosis"}
                  for name, index in class_indices(project).items()]
    info = {"description": f"{options.status.capitalize()} masks of {project.name}",
            "date_created": timezone.now().isoformat(), "segmentation": options.segmentation,
            "filters": options.filters()}
    out.write(f'{{"info": {json.dumps(info)},\n"licenses": [],\n"categories": {json.dumps(categories)},\n"images": [')
    with tempfile.TemporaryFile("w+", encoding="utf-8") as annotations_file:
        images, annotations = JsonArrayWriter(out), JsonArrayWriter(annotations_file)
        for image, mask, file_name in _export_rows(project, options):
            images.add({"id": image.id, "file_name": file_name, "width": image.width, "height": image.height,
                        "sha256": image.sha256, "label": image.export_label,
                        "label_source": image.export_label_source or None, "review_status": image.review_status})
            if mask is None:
                continue
            array = _mask_read(mask.file)
            if not array.any():
                continue  # a healthy image: nothing to outline
            annotations.add(_coco_annotation(project, image, mask, array, annotations.count + 1,
                                             options.segmentation))
        out.write('\n],\n"annotations": [')
        annotations_file.seek(0)
        shutil.copyfileobj(annotations_file, out)
    out.write("\n]}\n")
    out.flush()
    out.detach()  # leave `target` open for the caller


def _coco_annotation(project, image, mask, array, annotation_id, segmentation) -> dict:
    rle = coco_mask.encode(np.asfortranarray(array.astype(np.uint8)))
    approved = image.review_status == Image.ReviewStatus.APPROVED
    return {
        "id": annotation_id,
        "image_id": image.id,
        "category_id": class_index(project, image.export_label),
        "segmentation": (mask_polygons(array) if segmentation == "polygon"
                         else {"size": rle["size"], "counts": rle["counts"].decode("ascii")}),
        "area": float(coco_mask.area(rle)),
        "bbox": [float(v) for v in coco_mask.toBbox(rle)],
        "iscrowd": 0,
        "attributes": {
            "label": image.export_label, "label_source": image.export_label_source or None,
            "review_status": image.review_status, "mask_version": mask.version, "source": mask.source,
            "model_version": image.model_version or None, "uncertainty": image.uncertainty,
            "reviewer": image.export_reviewer if approved else None,
            "approved_at": image.reviewed_at.isoformat() if approved and image.reviewed_at else None,
        },
    }


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer outlines of the mask's regions as COCO polygons, approximate: holes are filled, and the outline
    is simplified by up to POLYGON_TOLERANCE pixels.

    Traced on the mask scaled up twice, each outline point lies a quarter pixel inside the region's pixel edges,
    which pycocotools rasterises back to the same pixels (tracing at scale 1 would put the outline through the
    boundary pixels' centres and lose about half of them)."""
    height, width = mask.shape
    doubled = cv2.resize(mask.astype(np.uint8), (2 * width, 2 * height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        simplified = cv2.approxPolyDP(contour, 2 * POLYGON_TOLERANCE, closed=True)
        if len(simplified) >= 3:  # a thin region may simplify to a line, which is no polygon
            contour = simplified
        points = (contour.reshape(-1, 2) + 0.5) / 2
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def dataset_zip_write(project: Project, options: ExportOptions, target: BinaryIO) -> None:
    """A zip that `ingest` imports again: `images/<name>` (the original files), `masks/<stem>.png` per image with a
    mask (0/255, or with `values=index` the class index of the image's label on its foreground), `labels.csv`
    (filename,label) and `index.json` (what each file is, and what the mask values mean)."""
    indices = class_indices(project)
    legend = ({"background": 0, "foreground": 255} if options.values == "binary"
              else {"background": 0, "classes": indices})
    with (zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive,
          tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as labels_file,
          tempfile.TemporaryFile("w+", encoding="utf-8") as index_file):
        labels = csv.writer(labels_file)
        labels.writerow(["filename", "label"])
        index_file.write(f'{{"project": {json.dumps(project.name)}, "values": "{options.values}", '
                         f'"legend": {json.dumps(legend)}, "filters": {json.dumps(options.filters())},\n"images": [')
        entries = JsonArrayWriter(index_file)
        for image, mask, file_name in _export_rows(project, options):
            # PNG and JPEG are compressed already: deflating them again costs time and saves nothing.
            with (default_storage.open(image.file, "rb") as source,
                  archive.open(_stored(f"images/{file_name}"), "w") as out):
                shutil.copyfileobj(source, out)
            mask_name = None
            if mask is not None:
                mask_name = f"masks/{PurePosixPath(file_name).stem}.png"
                with archive.open(_stored(mask_name), "w") as out:
                    _mask_png_write(mask, class_index(project, image.export_label), options.values, out)
            labels.writerow([file_name, image.export_label])
            entries.add({"image_id": image.id, "file_name": f"images/{file_name}", "mask": mask_name,
                         "original_name": image.original_name, "sha256": image.sha256, "label": image.export_label,
                         "label_source": image.export_label_source or None, "review_status": image.review_status,
                         "mask_version": mask.version if mask else None, "source": mask.source if mask else None})
        index_file.write("\n]}\n")
        for name, text in (("labels.csv", labels_file), ("index.json", index_file)):
            text.seek(0)
            with io.TextIOWrapper(archive.open(name, "w"), encoding="utf-8", newline="") as out:
                shutil.copyfileobj(text, out)


def _mask_png_write(mask, value: int, values: str, out: BinaryIO) -> None:
    if values == "binary":
        with default_storage.open(mask.file, "rb") as source:  # stored masks are 8-bit PNGs of 0 and 255 already
            shutil.copyfileobj(source, out)
        return
    PILImage.fromarray(np.where(_mask_read(mask.file), value, 0).astype(np.uint8)).save(out, format="PNG")


def _mask_read(name: str) -> np.ndarray:
    with default_storage.open(name, "rb") as f:
        return np.asarray(PILImage.open(f).convert("L")) > 0


def class_indices(project: Project) -> dict[str, int]:
    """Each class's COCO category id and index-mask value: its place in the project's classes, from 1 (0 is the
    background)."""
    return {name: position + 1 for position, name in enumerate(project.classes)}


def class_index(project: Project, label: str) -> int:
    """The label's index; for a mask on an image nobody has labelled (drawn before the ensemble ran), the first
    disease class's, since a mask marks a finding."""
    indices = class_indices(project)
    return indices.get(label) or indices[(project.disease_classes or project.classes)[0]]


def _export_rows(project: Project, options: ExportOptions) -> Iterator[tuple[tuple, tuple | None, str]]:
    """(image, its exported mask or None, its unique file name), reading CHUNK_SIZE images and their masks per
    round trip. Rows are named tuples of IMAGE_FIELDS and MASK_FIELDS, not model instances: an instance whose file
    was opened is in a reference cycle with its FieldFile, which only the cyclic garbage collector frees, so
    instances would pile up with the number of images exported."""
    images = selectors.export_images(project, options.status, options.label, options.reviewed_from,
                                     options.reviewed_to)
    rows = images.values_list(*IMAGE_FIELDS, named=True).iterator(chunk_size=CHUNK_SIZE)
    used_stems = set()
    while chunk := list(islice(rows, CHUNK_SIZE)):
        mask_ids = [image.export_mask_id for image in chunk if image.export_mask_id]
        masks = {mask.id: mask for mask in Mask.objects.filter(pk__in=mask_ids).values_list(*MASK_FIELDS, named=True)}
        for image in chunk:
            yield image, masks.get(image.export_mask_id), export_file_name(image, used_stems)


def export_file_name(image, used_stems: set[str]) -> str:
    """The image's own file name with the stored file's extension, unless another exported image has its stem (masks are named by stem) or the
    import would read the stem as a mask's (`x_mask` belongs to `x`): then the image id is added."""
    path = PurePosixPath(PurePosixPath(image.original_name.replace("\\", "/")).name or f"image-{image.id}")
    stem = path.stem
    while stem in used_stems or ingest.MASK_NAME.match(stem)["stem"] != stem:
        stem = f"{stem}-{image.id}"
    used_stems.add(stem)
    return f"{stem}{PurePosixPath(image.file).suffix}"  # what the file holds: a DICOM upload was stored as PNG


def _stored(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_STORED
    return info


class JsonArrayWriter:
    """The items of a JSON array written one at a time, so that the array never sits in memory."""

    def __init__(self, out: TextIO):
        self.out = out
        self.count = 0

    def add(self, item) -> None:
        self.out.write(("," if self.count else "") + "\n" + json.dumps(item))
        self.count += 1
