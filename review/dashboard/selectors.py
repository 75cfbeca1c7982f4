"""Reads for a project's dashboard: where its images stand, how often the ensemble asks for help, how fast
reviewers work, and how each model version scored. Each returns plain numbers; the view turns them into charts."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate

from annotator.models import ModelVersion, Project
from review.models import Review
from review.selectors import QUEUE_STATUSES, queue_status_conditions

DAYS = 30  # the time series cover the last month


@dataclass
class Series:
    x: list[str]
    lines: dict[str, list[float | None]]


def images_by_status(project: Project, now) -> dict[str, int]:
    """The images not yet annotated, then the annotated ones by the review queue's statuses."""
    annotated = Q(annotated_at__isnull=False)
    conditions = queue_status_conditions(now)
    return project.images.aggregate(not_annotated=Count("id", filter=~annotated), **{
        name: Count("id", filter=annotated & conditions[name]) for name in QUEUE_STATUSES})


def flagged_share_by_day(project: Project, now) -> Series:
    """Of the images the ensemble annotated each day, the share it flagged for review."""
    rows = (project.images.filter(annotated_at__gte=now - timedelta(days=DAYS))
            .annotate(day=TruncDate("annotated_at")).values("day")
            .annotate(total=Count("id"), flagged=Count("id", filter=Q(flagged=True))).order_by("day"))
    return Series(x=[row["day"].isoformat() for row in rows],
                  lines={"flagged": [row["flagged"] / row["total"] for row in rows]})


def decisions_by_reviewer(project: Project, now) -> Series:
    """Approvals and rejections per reviewer over the last month."""
    rows = (Review.objects.filter(image__project=project, created_at__gte=now - timedelta(days=DAYS),
                                  decision__in=[Review.Decision.APPROVED, Review.Decision.REJECTED])
            .values("reviewer__username")
            .annotate(approved=Count("id", filter=Q(decision=Review.Decision.APPROVED)),
                      rejected=Count("id", filter=Q(decision=Review.Decision.REJECTED)))
            .order_by("reviewer__username"))
    return Series(x=[row["reviewer__username"] for row in rows],
                  lines={"approved": [row["approved"] for row in rows],
                         "rejected": [row["rejected"] for row in rows]})


def decisions_by_day(project: Project, now) -> Series:
    rows = (Review.objects.filter(image__project=project, created_at__gte=now - timedelta(days=DAYS),
                                  decision__in=[Review.Decision.APPROVED, Review.Decision.REJECTED])
            .annotate(day=TruncDate("created_at")).values("day").annotate(decisions=Count("id")).order_by("day"))
    return Series(x=[row["day"].isoformat() for row in rows], lines={"decisions": [row["decisions"] for row in rows]})


def model_version_metrics(project: Project) -> Series:
    """Each version's held-out metrics that are shares (0..1), oldest version first; missing ones left out."""
    versions = list(ModelVersion.objects.filter(project=project).order_by("created_at"))
    names = sorted({key for v in versions for key, value in v.metrics.items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1})
    return Series(x=names, lines={f"{v.name} ({v.status.replace('_', ' ')})": [v.metrics.get(n) for n in names]
                                  for v in versions})
