"""What to export, from the query parameters of the page's form or the API."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from annotator.models import Image, Project

SEGMENTATIONS = ("rle", "polygon")
MASK_VALUES = ("binary", "index")
STATUSES = tuple(Image.ReviewStatus.values)
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # YYYY-MM-DD in ASCII digits, nothing else


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
    empty ones take the default. Every bad one is named in ExportOptionsError, and so is a date range that ends before
    it starts."""
    errors = {}

    def choice(name, choices, default):
        value = params.get(name) or default
        if value not in choices:
            errors[name] = f"one of {', '.join(choices)}"
        return value

    def day(name):
        value = params.get(name)
        if not value:
            return None
        try:
            if DAY.fullmatch(value):  # fromisoformat alone would also take 20260105 and 2026-W02-1
                return date.fromisoformat(value)
        except ValueError:  # no such day, e.g. 2026-02-30
            pass
        errors[name] = "a date as YYYY-MM-DD"
        return None

    label = params.get("label") or ""
    if label and label not in project.classes:
        errors["label"] = f"one of the project's classes: {', '.join(project.classes)}"
    reviewed_from, reviewed_to = day("reviewed_from"), day("reviewed_to")
    if reviewed_from and reviewed_to and reviewed_from > reviewed_to:
        errors["reviewed_from"] = f"{reviewed_from} is after reviewed_to ({reviewed_to})"
    options = ExportOptions(status=choice("status", STATUSES, Image.ReviewStatus.APPROVED), label=label,
                            reviewed_from=reviewed_from, reviewed_to=reviewed_to,
                            segmentation=choice("format", SEGMENTATIONS, "rle"),
                            values=choice("values", MASK_VALUES, "binary"))
    if errors:
        raise ExportOptionsError(errors)
    return options
