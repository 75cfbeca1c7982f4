"""Server-rendered pages: projects, upload with job progress, and exports."""
from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from annotator import charts, dashboard, export, selectors
from annotator.api import coco_response, dataset_zip_response, upload_to_job

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


def project_dashboard(request, pk):
    """Plots of where the project stands; anyone who can see the project can see them."""
    project = selectors.project_get(request.user, pk)
    now = timezone.now()
    status = {name.replace("_", " "): count for name, count in dashboard.images_by_status(project, now).items()}
    flagged = dashboard.flagged_share_by_day(project, now)
    by_reviewer = dashboard.decisions_by_reviewer(project, now)
    by_day = dashboard.decisions_by_day(project, now)
    metrics = dashboard.model_version_metrics(project)
    # (title, chart or None when there is nothing to plot, what to say instead)
    figures = [
        ("Images by status", any(status.values()) and charts.bar_chart(list(status), {"images": list(status.values())}),
         "No images yet."),
        ("Share flagged for review, by day annotated", flagged.x and charts.line_chart(
            flagged.x, flagged.lines, unit="%", top=1), "Nothing annotated in the last 30 days."),
        ("Decisions per reviewer, last 30 days", by_reviewer.x and charts.bar_chart(by_reviewer.x, by_reviewer.lines),
         "No decisions in the last 30 days."),
        ("Decisions per day", by_day.x and charts.line_chart(by_day.x, by_day.lines),
         "No decisions in the last 30 days."),
        ("Model versions on the held-out validation split", metrics.x and metrics.lines and charts.bar_chart(
            metrics.x, metrics.lines, unit="%", top=1), "No fine-tuned version yet: the project uses the built-in "
                                                         "ensemble."),
    ]
    return render(request, "annotator/dashboard.html", {
        "project": project, "status": status, "figures": figures,
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
    return _export(request, pk, coco_response)


@admin_required
def export_png(request, pk):
    return _export(request, pk, dataset_zip_response)


def _export(request, pk, respond):
    """The project page's export form sends its options here; bad ones go back to the page with the reason."""
    project = selectors.project_get(request.user, pk)
    try:
        options = export.export_options_parse(request.GET, project)
    except export.ExportOptionsError as error:
        messages.error(request, f"Export: {error}")
        return redirect("project", pk=pk)
    return respond(project, options)
