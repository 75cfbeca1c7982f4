"""Server-rendered pages: projects, upload with job progress, and exports."""
import json
from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from annotator import export, selectors
from annotator.api import png_zip_response, upload_to_job

IMAGES_PER_PAGE = 100


def admin_required(view):
    """Admins only; anyone else logged in gets 403 (anonymous users were already sent to the login page)."""
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied
        return view(request, *args, **kwargs)
    return wrapped


def home(request):
    return render(request, "annotator/home.html", {"projects": selectors.projects_visible(request.user)})


def project_detail(request, pk):
    project = selectors.project_get(request.user, pk)
    images = project.images.select_related("reviewed_by").order_by("-flagged", "-uncertainty", "id")
    page = Paginator(images, IMAGES_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "annotator/project.html", {
        "project": project,
        "page": page,
        "jobs": project.jobs.all()[:10],
        "can_review": selectors.user_can_review(request.user, project),
    })


@require_POST
@admin_required
def project_upload(request, pk):
    project = selectors.project_get(request.user, pk)
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a zip file to upload.")
        return redirect("project", pk=pk)
    try:
        job = upload_to_job(project, upload, request.user)
    except ValidationError as error:
        messages.error(request, " ".join(str(m) for m in error.detail.get("file", [error.detail])))
        return redirect("project", pk=pk)
    messages.success(request, f"{upload.name}: {job.imported} new images queued for the ensemble"
                              f"{f', {job.duplicates} already here' if job.duplicates else ''}"
                              f"{f', {len(job.errors)} rejected (see below)' if job.errors else ''}.")
    return redirect("project", pk=pk)


@admin_required
def export_coco(request, pk):
    project = selectors.project_get(request.user, pk)
    response = HttpResponse(json.dumps(export.project_export_coco(project)), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{project.name}-coco.json"'
    return response


@admin_required
def export_png(request, pk):
    return png_zip_response(selectors.project_get(request.user, pk))
