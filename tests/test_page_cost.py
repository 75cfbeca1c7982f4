"""Page cost independent of the project's size: on PostgreSQL with 100 000 images, every query of the hot pages and
endpoints walks an index, never the whole image table; and the counts they show come from tallies that follow every
change of an image's state."""
import pytest
from django.contrib.admin.sites import site
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotator.models import Image
from annotator.tallies import images_delete, tallies_count, tallies_kept, tallies_recount, tallies_rebuild
from review.services import image_approve, image_reject, image_requeue
from tests.factories import annotated_image, box_mask, mask_file

SEEDED = 100_000

# Columns Django fills in from Python defaults; the seed gives them in SQL: a quarter flagged, one image in ten
# approved and one in ten rejected, one in twenty not annotated yet.
SEED_SQL = """
INSERT INTO annotator_image (project_id, sha256, file, original_name, width, height, label, reference_mask,
    series_uid, series_description, annotated_at, model_version, predicted_label, uncertainty, flagged, flag_reason,
    reviewed_label, review_status, created_at)
SELECT %s, md5(n::text) || md5((-n)::text), 'images/seed.png', 'seed-' || n || '.png', 64, 64, '', '', '', '',
    CASE WHEN n %% 20 = 0 THEN NULL ELSE now() END, 'seed@0', 'lesion', random(), n %% 4 = 0, '', '',
    CASE n %% 10 WHEN 1 THEN 'approved' WHEN 2 THEN 'rejected' ELSE 'pending' END, now()
FROM generate_series(1, %s) AS n
"""


def image_table_scans(queries) -> list[str]:
    """The plans, on this database, of the queries that read the image table by a sequential scan."""
    scans = []
    with connection.cursor() as cursor:
        for sql in (query["sql"] for query in queries):
            if "annotator_image" not in sql or sql.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
                continue
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            if "Seq Scan on annotator_image " in plan:
                scans.append(f"{sql}\n{plan}")
    return scans


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plans are PostgreSQL's")
def test_hot_pages_walk_indexes_on_100_000_images(team):
    image = annotated_image(team.project, "shown.png")
    with connection.cursor() as cursor:
        cursor.execute(SEED_SQL, [team.project.pk, SEEDED])
        cursor.execute("ANALYZE annotator_image")
    tallies_rebuild()  # the seed went behind the services' back
    assert tallies_count([team.project]) == SEEDED + 1
    mask = box_mask((40, 30), (2, 2, 30, 20))
    project = team.project.pk
    for user in (team.radiologist, team.admin):  # a member's pages join the memberships, an admin's see every project
        client, api = team.client(user), team.api(user)
        with CaptureQueriesContext(connection) as captured:
            for url in ("/", "/review/", f"/review/?project={project}", f"/review/?project={project}&status=approved",
                        "/review/?status=in_review", f"/projects/{project}/", f"/projects/{project}/?page=3",
                        f"/review/images/{image.pk}/"):
                assert client.get(url).status_code == 200, url
            for url in ("/api/review/queue/", f"/api/review/queue/?project={project}", f"/api/images/{image.pk}/"):
                assert api.get(url).status_code == 200, url
            listed = api.get(f"/api/projects/{project}/images/").json()
            assert listed["count"] == SEEDED + 1 and api.get(listed["next"]).json()["results"][0]["id"] > image.pk
            assert client.post(f"/review/next/?project={project}").status_code == 302
            assert client.post("/review/next/").status_code == 302
            saved = api.post(f"/api/images/{image.pk}/masks/", {"file": mask_file(mask)}, format="multipart")
            assert saved.status_code == 201, saved.content
        assert not image_table_scans(captured), "\n\n".join(image_table_scans(captured))


def test_the_queue_counts_and_totals_come_from_the_tallies(team):
    images = [annotated_image(team.project, f"scan{i}.png", flagged=i < 2) for i in range(6)]
    image_approve(images[0], team.radiologist)
    image_reject(images[1], team.radiologist)
    image_reject(images[2], team.radiologist)
    image_requeue(images[2], team.radiologist)
    client = team.client(team.radiologist)
    client.post("/review/next/")  # holds one image: in review
    page = client.get("/review/")
    assert page.context["counts"] == {"pending": 3, "in_review": 1, "approved": 1, "rejected": 1}
    assert page.context["count"] == 4
    assert client.get("/review/?status=approved").context["page"].paginator.count == 1
    assert client.get("/review/?label=lesion").context["count"] == 4  # narrowed: counted, up to a cap
    assert team.api(team.radiologist).get("/api/review/queue/").json()["count"] == 4
    assert team.api(team.radiologist).get(f"/api/projects/{team.project.pk}/images/").json()["count"] == 6
    home = {project.name: project for project in client.get("/").context["projects"]}["BUSI"]
    assert (home.image_count, home.flagged_count, home.pending_count, home.approved_count) == (6, 2, 4, 1)
    outsider = team.client(team.outsider).get("/review/")
    assert outsider.context["counts"] == {"pending": 0, "in_review": 0, "approved": 0, "rejected": 0}


def test_deleting_images_in_the_admin_takes_them_off_the_tallies(team, rf):
    images = [annotated_image(team.project, f"scan{i}.png", flagged=i == 0) for i in range(4)]
    image_approve(images[1], team.radiologist)
    admin = site._registry[Image]
    request = rf.post("/admin/")
    request.user = team.admin
    admin.delete_model(request, images[0])
    admin.delete_queryset(request, Image.objects.filter(pk__in=[images[1].pk, images[2].pk]))
    assert list(Image.objects.all()) == [images[3]]
    assert tallies_kept() == tallies_recount(Image.objects.all())
    assert images_delete(Image.objects.none()) == 0
