"""The project page's export buttons, admins only: bad options go back to the page with the reason."""
from django.contrib import messages
from django.shortcuts import redirect

from annotator import access
from annotator.export.options import ExportOptionsError, export_options_parse
from annotator.export.responses import coco_response, dataset_zip_response


def export_coco(request, pk):
    return _export(request, pk, coco_response)


def export_png(request, pk):
    return _export(request, pk, dataset_zip_response)


def _export(request, pk, respond):
    project = access.project_for_admin(request.user, pk, "export")
    try:
        options = export_options_parse(request.GET, project)
    except ExportOptionsError as error:
        messages.error(request, f"Export: {error}")
        return redirect("project", pk=pk)
    return respond(project, options)
