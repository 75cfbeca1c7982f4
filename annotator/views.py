"""Server-rendered pages: projects, upload with job progress, exports, and the image files behind login."""
import json

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from annotator import export, selectors
from annotator.api import png_zip_response, upload_to_job
from annotator.models import Mask, Prediction


def home(request):
    return render(request, "annotator/home.html", {"projects": selectors.projects_visible(request.user)})


def project_detail(request, pk):
    project = selectors.project_get(request.user, pk)
    images = project.images.select_related("reviewed_by").order_by("-flagged", "-uncertainty", "id")
    return render(request, "annotator/project.html", {
        "project": project,
        "images": images,
        "jobs": project.jobs.all()[:10],
        "can_review": selectors.user_can_review(request.user, project),
    })


@require_POST
@staff_member_required
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


@staff_member_required
def export_coco(request, pk):
    project = selectors.project_get(request.user, pk)
    response = HttpResponse(json.dumps(export.project_export_coco(project)), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{project.name}-coco.json"'
    return response


@staff_member_required
def export_png(request, pk):
    return png_zip_response(selectors.project_get(request.user, pk))


def image_file(request, pk):
    image = selectors.image_get(request.user, pk)
    return FileResponse(image.file.open("rb"), content_type=f"image/{'png' if image.file.name.endswith('png') else 'jpeg'}")


def heatmap_file(request, pk):
    prediction = get_object_or_404(Prediction, pk=pk)
    _check_visible(request.user, prediction.image_id)
    return FileResponse(prediction.heatmap.open("rb"), content_type="image/png")


def mask_file(request, pk):
    mask = get_object_or_404(Mask, pk=pk)
    _check_visible(request.user, mask.image_id)
    return FileResponse(mask.file.open("rb"), content_type="image/png")


def _check_visible(user, image_id):
    if not selectors.images_visible(user).filter(pk=image_id).exists():
        raise PermissionDenied
