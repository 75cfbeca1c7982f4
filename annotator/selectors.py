"""Reads, always through what the user may see: admins see everything, others the projects they belong to."""
from django.db.models import (BigIntegerField, BooleanField, Case, Count, ExpressionWrapper, F, OuterRef, Prefetch, Q,
                              Subquery, Value, When)
from django.shortcuts import get_object_or_404

from annotator.models import Image, Job, Mask, Membership, Project


def projects_listed(user):
    """The projects the user may see, by name, without counts (for menus)."""
    projects = Project.objects.all() if user.is_staff else Project.objects.filter(members=user)
    return projects.order_by("name")


def projects_visible(user):
    return projects_listed(user).annotate(
        image_count=Count("images", distinct=True),
        pending_count=Count("images", filter=Q(images__review_status=Image.ReviewStatus.PENDING), distinct=True),
        approved_count=Count("images", filter=Q(images__review_status=Image.ReviewStatus.APPROVED), distinct=True),
        flagged_count=Count("images", filter=Q(images__flagged=True), distinct=True),
    ).order_by("name")


def project_get(user, pk) -> Project:
    return get_object_or_404(projects_visible(user), pk=pk)


def images_visible(user):
    images = Image.objects.select_related("project")
    return images if user.is_staff else images.filter(project__members=user)


def image_get(user, pk) -> Image:
    return get_object_or_404(images_visible(user), pk=pk)


def image_detail_get(user, pk) -> Image:
    """One image with everything its API detail shows, in a fixed number of queries."""
    images = images_visible(user).select_related("reviewed_by", "study").prefetch_related(
        "predictions", Prefetch("masks", queryset=Mask.objects.select_related("author", "restored_from")))
    return get_object_or_404(images, pk=pk)


def job_get(user, pk) -> Job:
    jobs = Job.objects.all() if user.is_staff else Job.objects.filter(project__members=user)
    return get_object_or_404(jobs, pk=pk)


def user_can_review(user, project) -> bool:
    """Admins and the project's radiologists may edit masks and decide; viewers only look."""
    if user.is_staff:
        return True
    return Membership.objects.filter(project=project, user=user, role=Membership.Role.RADIOLOGIST).exists()


def projects_reviewable(user):
    """Projects whose images the user may decide on: all for admins, otherwise those they are a radiologist of."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(membership__user=user, membership__role=Membership.Role.RADIOLOGIST)


def mask_latest(image) -> Mask | None:
    return image.masks.order_by("-version").first()


def mask_versions(image):
    """Every mask version of the image, oldest first, with what the history page shows of each."""
    return image.masks.select_related("author", "parent", "restored_from").order_by("version")


QUEUE_ORDER = ("-flagged", "-uncertainty", F("last_served_at").asc(nulls_first=True), "id")


def review_queue(user, project=None):
    """Annotated images waiting for a decision: flagged first, the most uncertain first, then the least recently
    served."""
    images = images_visible(user).filter(review_status=Image.ReviewStatus.PENDING, annotated_at__isnull=False)
    if project is not None:
        images = images.filter(project=project)
    return images.order_by(*QUEUE_ORDER)


def claimable(images, user, now):
    """Of these images, those no other reviewer holds right now."""
    return images.filter(Q(claimed_by__isnull=True) | Q(claim_expires_at__lt=now) | Q(claimed_by=user))


QUEUE_STATUSES = ("pending", "in_review", "approved", "rejected")


def review_listing(user, now, project=None, status="", label="", uncertainty_min=None, uncertainty_max=None,
                   reviewer=""):
    """The queue page's rows and counts per status; with no status, what still waits (pending and in review)."""
    images = images_visible(user).filter(annotated_at__isnull=False)
    if project is not None:
        images = images.filter(project=project)
    in_review = Q(review_status=Image.ReviewStatus.PENDING, claim_expires_at__gte=now)
    by_status = {
        "pending": Q(review_status=Image.ReviewStatus.PENDING) & ~in_review,
        "in_review": in_review,
        "approved": Q(review_status=Image.ReviewStatus.APPROVED),
        "rejected": Q(review_status=Image.ReviewStatus.REJECTED),
    }
    counts = images.aggregate(**{name: Count("id", filter=condition) for name, condition in by_status.items()})
    images = images.filter(by_status[status] if status in by_status else Q(review_status=Image.ReviewStatus.PENDING))
    if label:
        images = images.filter(predicted_label=label)
    if uncertainty_min is not None:
        images = images.filter(uncertainty__gte=uncertainty_min)
    if uncertainty_max is not None:
        images = images.filter(uncertainty__lte=uncertainty_max)
    if reviewer:
        images = images.filter(Q(reviewed_by__username=reviewer) | Q(claimed_by__username=reviewer))
    images = images.select_related("project", "claimed_by", "reviewed_by").annotate(
        in_review=ExpressionWrapper(in_review, output_field=BooleanField())).order_by(*QUEUE_ORDER)
    return images, counts


# Where an exported image's label comes from, in order of trust: the radiologist, the upload, the ensemble.
EXPORT_LABEL_SOURCES = (("reviewed", "reviewed_label"), ("upload", "label"), ("predicted", "predicted_label"))


def export_images(project, status, label="", reviewed_from=None, reviewed_to=None):
    """A project's images for an export, in id order, each with `export_label`, `export_label_source` and
    `export_mask_id`: the approved version of an approved image, the latest version of a pending one, none for a
    rejected one (its annotation was turned down), and `export_reviewer` (a username). Dates filter on the day of
    the review decision."""
    images = project.images.filter(review_status=status)
    if status == Image.ReviewStatus.APPROVED:
        images = images.filter(approved_mask__isnull=False)
        mask = F("approved_mask_id")
    elif status == Image.ReviewStatus.PENDING:
        mask = Subquery(Mask.objects.filter(image=OuterRef("pk")).order_by("-version").values("id")[:1])
    else:
        mask = Value(None, output_field=BigIntegerField())
    images = images.annotate(
        export_mask_id=mask,
        export_reviewer=F("reviewed_by__username"),
        export_label=Case(*[When(~Q(**{field: ""}), then=F(field)) for _, field in EXPORT_LABEL_SOURCES],
                          default=Value("")),
        export_label_source=Case(*[When(~Q(**{field: ""}), then=Value(source))
                                   for source, field in EXPORT_LABEL_SOURCES], default=Value("")),
    )
    if label:
        images = images.filter(export_label=label)
    if reviewed_from:
        images = images.filter(reviewed_at__date__gte=reviewed_from)
    if reviewed_to:
        images = images.filter(reviewed_at__date__lte=reviewed_to)
    return images.order_by("id")
