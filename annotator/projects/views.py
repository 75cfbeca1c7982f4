"""Server-rendered pages: the projects a user belongs to, and one project with its images and upload jobs."""
from django.shortcuts import render

from annotator import access
from annotator.pagination import CountedPaginator
from annotator.projects import selectors
from annotator.tallies import tallies_count

IMAGES_PER_PAGE = 100


def home(request):
    return render(request, "annotator/home.html", {"projects": selectors.projects_with_counts(request.user)})


def project_detail(request, pk):
    project = access.project_get(request.user, pk)
    page = CountedPaginator(selectors.project_images(project), IMAGES_PER_PAGE, tallies_count([project])).get_page(
        request.GET.get("page"))
    return render(request, "annotator/project.html", {
        "project": project,
        "page": page,
        "jobs": project.jobs.all()[:10],
        "can_review": access.user_can_review(request.user, project),
    })
