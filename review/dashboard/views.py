"""The dashboard page: plots of where the project stands; anyone who can see the project can see them."""
from django.shortcuts import render
from django.utils import timezone

from annotator import access
from review.dashboard import charts, selectors


def project_dashboard(request, pk):
    project = access.project_get(request.user, pk)
    now = timezone.now()
    status = {name.replace("_", " "): count for name, count in selectors.images_by_status(project, now).items()}
    flagged = selectors.flagged_share_by_day(project, now)
    by_reviewer = selectors.decisions_by_reviewer(project, now)
    by_day = selectors.decisions_by_day(project, now)
    metrics = selectors.model_version_metrics(project)
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
    return render(request, "review/dashboard.html", {"project": project, "status": status, "figures": figures})
