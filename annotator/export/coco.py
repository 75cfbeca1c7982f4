"""COCO JSON: one image per exported image, one annotation per non-empty mask, as RLE (exact) or polygons (close;
RLE where the mask has a hole)."""
from __future__ import annotations

import io
import json
import shutil
import tempfile
from typing import BinaryIO

import cv2
import numpy as np
from django.utils import timezone
from pycocotools import mask as coco_mask

from annotator.export.json_array import JsonArrayWriter
from annotator.export.options import ExportOptions
from annotator.export.selectors import class_index, class_indices, export_rows
from annotator.models import Image, Project
from annotator.png import mask_file_read

# Largest distance of a simplified polygon from the traced outline, in pixels: well under a pixel keeps the
# rasterised polygon within a few boundary pixels of the mask while dropping most staircase corners.
POLYGON_TOLERANCE = 0.5


def coco_export_write(project: Project, options: ExportOptions, target: BinaryIO) -> None:
    """COCO JSON into `target`: one image per exported image, one annotation per non-empty mask, categories from
    the project's classes (ids as in `class_indices`). RLE is the exact mask; polygons are its traced outlines, or
    RLE for a mask with a hole."""
    out = io.TextIOWrapper(target, encoding="utf-8", newline="\n")
    categories = [{"id": index, "name": name, "supercategory": "diagnosis"}
                  for name, index in class_indices(project).items()]
    info = {"description": f"{options.status.capitalize()} masks of {project.name}",
            "date_created": timezone.now().isoformat(), "segmentation": options.segmentation,
            "filters": options.filters()}
    out.write(f'{{"info": {json.dumps(info)},\n"licenses": [],\n"categories": {json.dumps(categories)},\n"images": [')
    with tempfile.TemporaryFile("w+", encoding="utf-8") as annotations_file:
        images, annotations = JsonArrayWriter(out), JsonArrayWriter(annotations_file)
        for image, mask, file_name in export_rows(project, options):
            images.add({"id": image.id, "file_name": file_name, "width": image.width, "height": image.height,
                        "sha256": image.sha256, "label": image.export_label,
                        "label_source": image.export_label_source or None, "review_status": image.review_status})
            if mask is None:
                continue
            array = mask_file_read(mask.file)
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
        "segmentation": _segmentation(array, rle, segmentation),
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


def _segmentation(array, rle, segmentation) -> list[list[float]] | dict:
    """Polygons if they were asked for and can draw the mask; otherwise RLE, exact (so for a mask with a hole)."""
    polygons = mask_polygons(array) if segmentation == "polygon" else None
    return polygons if polygons is not None else {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def mask_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """The outlines of the mask's regions as COCO polygons, simplified by up to POLYGON_TOLERANCE pixels; None for a
    mask with a hole, which they cannot draw: COCO tools (pycocotools' frPyObjects and merge) read the polygons of one
    annotation as a union, so a hole's outline would be filled, not cut out.

    Traced on the mask scaled up twice, each outline point lies a quarter pixel inside the region's pixel edges,
    which pycocotools rasterises back to the same pixels (tracing at scale 1 would put the outline through the
    boundary pixels' centres and lose about half of them)."""
    height, width = mask.shape
    doubled = cv2.resize(mask.astype(np.uint8), (2 * width, 2 * height), interpolation=cv2.INTER_NEAREST)
    # Two levels: the regions' outer outlines, and inside them the holes' (their parent is an outer outline).
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if contours and (hierarchy[0][:, 3] >= 0).any():
        return None
    polygons = []
    for contour in contours:
        simplified = cv2.approxPolyDP(contour, 2 * POLYGON_TOLERANCE, closed=True)
        if len(simplified) >= 3:  # a thin region may simplify to a line, which is no polygon
            contour = simplified
        points = (contour.reshape(-1, 2) + 0.5) / 2
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons
