"""No N+1: the pages a radiologist lives on cost the same number of queries with ten times the data."""
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotator.models import Mask
from annotator.masks.services import mask_create
from review.services import image_approve, image_claim_next
from tests.factories import annotated_image, box_mask


def queries(client, url):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200, url
    return len(captured)


def add_images(team, count, start):
    """Images in every state the pages show: waiting, claimed, approved with a reviewer, with several versions."""
    images = [annotated_image(team.project, f"scan{start + i}.png", flagged=i % 2 == 0, uncertainty=i / count)
              for i in range(count)]
    for image in images[: count // 3]:
        image_approve(image, team.radiologist, comment="fine")
    image_claim_next(team.admin, team.project)
    return images


def test_queue_image_and_project_pages_do_not_grow_with_the_data(team):
    client = team.client(team.radiologist)
    first = add_images(team, 3, 0)[0]
    pages = ["/review/", f"/review/?project={team.project.pk}&status=approved", f"/review/images/{first.pk}/",
             f"/projects/{team.project.pk}/", f"/review/images/{first.pk}/history/", "/api/review/queue/",
             f"/api/projects/{team.project.pk}/images/", f"/api/images/{first.pk}/"]
    few = {url: queries(client, url) for url in pages}
    add_images(team, 30, 3)
    for version in range(5):  # the first image's history grows too
        mask_create(first, box_mask((40, 30), (0, 0, 5 + version, 5)), Mask.Source.HUMAN, author=team.radiologist)
    many = {url: queries(client, url) for url in pages}
    assert many == few
