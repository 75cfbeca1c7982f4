"""The project page's upload form, admins only."""
from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from annotator import access
from annotator.ingest.archive import UploadError
from annotator.ingest.services import upload_receive


@require_POST
def project_upload(request, pk):
    project = access.project_for_admin(request.user, pk, "upload")
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a zip file to upload.")
        return redirect("project", pk=pk)
    try:
        job = upload_receive(project, upload, request.user)
    except UploadError as error:
        messages.error(request, str(error))
        return redirect("project", pk=pk)
    messages.success(request, f"{upload.name}: {job.imported} new images queued for the ensemble"
                              f"{f', {job.duplicates} already here' if job.duplicates else ''}"
                              f"{f', {len(job.errors)} rejected (see below)' if job.errors else ''}.")
    return redirect("project", pk=pk)
