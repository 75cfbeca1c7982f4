"""An export as a download, for the page and the API alike."""
import tempfile

from django.http import FileResponse

from annotator.export.coco import coco_export_write
from annotator.export.dataset_zip import dataset_zip_write
from annotator.export.options import ExportOptions
from annotator.models import Project


def coco_response(project: Project, options: ExportOptions) -> FileResponse:
    return _export_response(coco_export_write, project, options, "coco.json", "application/json")


def dataset_zip_response(project: Project, options: ExportOptions) -> FileResponse:
    return _export_response(dataset_zip_write, project, options, "dataset.zip", "application/zip")


def _export_response(write, project, options, suffix, content_type) -> FileResponse:
    """Written to a temporary file first and streamed from there, so no export is ever held in memory."""
    target = tempfile.TemporaryFile()
    try:
        write(project, options, target)
    except BaseException:
        target.close()
        raise
    target.seek(0)
    return FileResponse(target, as_attachment=True, filename=f"{project.name}-{options.status}-{suffix}",
                        content_type=content_type)
