"""Approved masks out of the tool: COCO with RLE segmentation (pycocotools) and a zip of PNG masks."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import PurePosixPath

import numpy as np
from pycocotools import mask as coco_mask

from annotator.models import Image, Project
from annotator.services import mask_array


def approved_images(project: Project):
    return (project.images.filter(review_status=Image.ReviewStatus.APPROVED, approved_mask__isnull=False)
            .select_related("approved_mask", "reviewed_by").order_by("id"))


def project_export_coco(project: Project) -> dict:
    """One COCO image per approved image, one RLE annotation per non-empty approved mask."""
    categories = [{"id": i + 1, "name": name, "supercategory": "finding"}
                  for i, name in enumerate(project.disease_classes)]
    category_ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image in approved_images(project):
        images.append({"id": image.pk, "file_name": image.original_name, "width": image.width,
                       "height": image.height, "sha256": image.sha256})
        mask = mask_array(image.approved_mask)
        if not mask.any():
            continue
        label = image.label or image.predicted_label
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "id": len(annotations) + 1,
            "image_id": image.pk,
            "category_id": category_ids.get(label, categories[0]["id"]),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": float(coco_mask.area(rle)),
            "bbox": [float(v) for v in coco_mask.toBbox(rle)],
            "iscrowd": 0,
            "attributes": {"mask_version": image.approved_mask.version, "source": image.approved_mask.source,
                           "model_version": image.model_version, "uncertainty": image.uncertainty,
                           "reviewer": image.reviewed_by.username if image.reviewed_by else None,
                           "approved_at": image.reviewed_at.isoformat() if image.reviewed_at else None},
        })
    return {"info": {"description": f"Approved masks of {project.name}"}, "images": images,
            "annotations": annotations, "categories": categories}


def project_export_png_zip(project: Project, target) -> None:
    """Write a zip of `masks/<image name>.png` (0/255) per approved image, and index.json, into `target`."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        used, index = set(), []
        for image in approved_images(project):
            name = f"masks/{png_name(image, used)}"
            with image.approved_mask.file.open("rb") as f:
                archive.writestr(name, f.read())
            index.append({"image_id": image.pk, "file_name": image.original_name, "mask": name})
        archive.writestr("index.json", json.dumps(index, indent=1))


def png_name(image: Image, used: set) -> str:
    """The image's own name with .png; two images of the same name get their id added."""
    name = f"{PurePosixPath(image.original_name).stem}.png"
    if name in used:
        name = f"{PurePosixPath(image.original_name).stem}-{image.pk}.png"
    used.add(name)
    return name
