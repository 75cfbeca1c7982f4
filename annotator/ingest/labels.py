"""Image-level labels given with an upload: a CSV of `filename,label`."""
from __future__ import annotations

import csv
import io

from django.conf import settings

from annotator.ingest.archive import UploadContents, UploadError, path_of

# What a spreadsheet reads as the start of a formula (OWASP, CSV injection); a single quote in front makes it text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_QUOTE = "'"
QUOTED_START = FORMULA_START + (TEXT_QUOTE,)  # a leading quote is quoted too, so that quoting can be undone


def csv_cell_escape(value: str) -> str:
    """`value` as a CSV cell that a spreadsheet shows as text and never runs as a formula."""
    return TEXT_QUOTE + value if value.startswith(QUOTED_START) else value


def csv_cell_unescape(value: str) -> str:
    """The cell as it was before csv_cell_escape: an exported labels.csv imports with its file names unchanged."""
    quoted = value.startswith(TEXT_QUOTE) and value[1:].startswith(QUOTED_START)
    return value[1:] if quoted else value


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
        return {path_of(csv_cell_unescape(row["filename"] or "")).name: csv_cell_unescape(row["label"] or "").strip()
                for row in reader}
    except csv.Error as error:
        raise UploadError(f"not a readable CSV ({error}); no labels were applied") from error


def labels_for(project, contents: UploadContents, label_map: dict[str, str], errors: list[dict]) -> dict[str, str]:
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
    images = {path_of(e.name).name for e in contents.images}
    errors += [{"name": name, "reason": f"row for {file!r}: no such image in the upload"}
               for file in sorted(set(labels) - images)]
    errors += [{"name": name, "reason": f"label {label!r} is not one of {project.classes}; left unlabelled"}
               for label in sorted({v for v in labels.values() if v and v not in project.classes})]
    return {file: label for file, label in labels.items() if label in project.classes}
