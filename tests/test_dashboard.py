"""The project dashboard: images by status, flagged share over time, reviewer throughput and model versions, as
plots for anyone who can see the project."""
import re
from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotator.models import Image, ModelVersion
from annotator.tallies import image_tally_add
from review.services import image_approve, image_reject
from tests.factories import annotated_image


def figures(response):
    """Each figure's caption and its SVG (or None when it says there is nothing to plot)."""
    html = response.content.decode()
    found = re.findall(r'<figure class="chart">\s*<figcaption>(.*?)</figcaption>\s*(<svg.*?</svg>)?', html, re.S)
    return {caption: svg or None for caption, svg in found}


def test_dashboard_plots_status_flagged_share_throughput_and_model_versions(team):
    images = [annotated_image(team.project, f"scan{i}.png", flagged=i % 2 == 0) for i in range(6)]
    Image.objects.filter(pk=images[5].pk).update(annotated_at=timezone.now() - timedelta(days=2))
    image_tally_add(Image.objects.create(project=team.project, sha256="f" * 64, original_name="new.png", width=4,
                                         height=4))
    image_approve(images[0], team.radiologist)
    image_approve(images[1], team.radiologist)
    image_reject(images[2], team.admin)
    ModelVersion.objects.create(project=team.project, name="ft-1", folder="/nowhere", status="promoted",
                                metrics={"balanced_accuracy": 0.8, "iou": 0.3, "images": 12})

    response = team.client(team.radiologist).get(f"/projects/{team.project.pk}/dashboard/")
    assert response.status_code == 200
    assert response.context["status"] == {"not annotated": 1, "pending": 3, "in review": 0, "approved": 2,
                                          "rejected": 1}
    plots = figures(response)
    assert len(plots) == 5 and all(plots.values()), plots.keys()
    status_bars = re.findall(r"<rect [^>]*><title>(.*?)</title>", plots["Images by status"])
    assert status_bars == ["not annotated · images: 1", "pending · images: 3", "in review · images: 0",
                           "approved · images: 2", "rejected · images: 1"]
    days = re.findall(r"<circle [^>]*><title>(.*?)</title>", plots["Share flagged for review, by day annotated"])
    assert len(days) == 2 and days[-1].endswith("flagged: 60%")  # today 3 of 5 flagged; two days ago 0 of 1
    reviewers = re.findall(r"<title>(.*?)</title>", plots["Decisions per reviewer, last 30 days"])
    assert reviewers == ["admin · approved: 0", "radiologist · approved: 2", "admin · rejected: 1",
                         "radiologist · rejected: 0"]
    versions = re.findall(r"<title>(.*?)</title>", plots["Model versions on the held-out validation split"])
    assert versions == ["balanced_accuracy · ft-1 (promoted): 80%", "iou · ft-1 (promoted): 30%"]


def test_an_empty_project_says_there_is_nothing_to_plot(team):
    response = team.client(team.viewer).get(f"/projects/{team.project.pk}/dashboard/")
    assert response.status_code == 200
    assert set(figures(response).values()) == {None}
    assert "No fine-tuned version yet" in response.content.decode()


def test_the_dashboard_costs_the_same_queries_with_ten_times_the_data(team):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert team.client(team.admin).get(f"/projects/{team.project.pk}/dashboard/").status_code == 200
        return len(captured)

    for i in range(2):
        image_approve(annotated_image(team.project, f"a{i}.png"), team.radiologist)
    few = queries()
    for i in range(20):
        image_approve(annotated_image(team.project, f"b{i}.png"), team.radiologist)
    assert queries() == few


def test_outsiders_and_anonymous_users_do_not_see_the_dashboard(team):
    from django.test import Client

    url = f"/projects/{team.project.pk}/dashboard/"
    assert team.client(team.outsider).get(url).status_code == 404
    response = Client().get(url)
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
