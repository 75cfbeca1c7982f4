"""The dataset zip: the images, their masks as PNGs, labels.csv and index.json, in the layout ingest imports."""
from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import PurePosixPath
from typing import BinaryIO

import numpy as np
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotator.export.json_array import JsonArrayWriter
from annotator.export.options import ExportOptions
from annotator.export.selectors import class_index, class_indices, export_rows
from annotator.ingest.labels import csv_cell_escape
from annotator.models import Project
from annotator.png import mask_file_read


def dataset_zip_write(project: Project, options: ExportOptions, target: BinaryIO) -> None:
    """A zip that `ingest` imports again: `images/<name>` (the original files), `masks/<stem>.png` per image with a
    mask (0/255, or with `values=index` the class index of the image's label on its foreground), `labels.csv`
    (filename,label; a cell a spreadsheet would run as a formula is quoted, see `csv_cell_escape`) and `index.json`
    (what each file is, and what the mask values mean)."""
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
        for image, mask, file_name in export_rows(project, options):
            # PNG and JPEG are compressed already: deflating them again costs time and saves nothing.
            with (default_storage.open(image.file, "rb") as source,
                  archive.open(_stored(f"images/{file_name}"), "w") as out):
                shutil.copyfileobj(source, out)
            mask_name = None
            if mask is not None:
                mask_name = f"masks/{PurePosixPath(file_name).stem}.png"
                with archive.open(_stored(mask_name), "w") as out:
                    _mask_png_write(mask, class_index(project, image.export_label), options.values, out)
            labels.writerow([csv_cell_escape(file_name), csv_cell_escape(image.export_label)])
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
    PILImage.fromarray(np.where(mask_file_read(mask.file), value, 0).astype(np.uint8)).save(out, format="PNG")


def _stored(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_STORED
    return info
