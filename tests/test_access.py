"""Everything needs a login; project membership decides what anyone sees; only admins upload and export."""
import pytest
from django.core.files.base import ContentFile

from annotator.models import CandidateMask, Mask, TrainingRun
from annotator.masks.services import mask_create
from tests.factories import annotated_image, box_mask, mask_png


@pytest.fixture
def urls(team):
    image = annotated_image(team.project)
    image.reference_mask.save("reference.png", ContentFile(mask_png(box_mask((40, 30), (2, 2, 8, 8)))))
    model_mask = image.masks.get()
    candidate = CandidateMask(image=image, model_version=image.model_version, source="segmentation", proposed=False)
    candidate.file.save("candidate.png", ContentFile(mask_png(box_mask((40, 30), (3, 3, 9, 9)))))
    # A drawn version on top of the model's, so that version 1 can be restored.
    mask_create(image, box_mask((40, 30), (0, 0, 9, 9)), Mask.Source.HUMAN, author=team.radiologist,
                parent=model_mask)
    p, i = team.project.pk, image.pk
    run = TrainingRun.objects.create(project=team.project, status=TrainingRun.Status.DONE)
    urls = {
        "pages": ["/", "/review/", f"/projects/{p}/", f"/review/images/{i}/", f"/review/images/{i}/history/",
                  f"/projects/{p}/dashboard/"],
        "project_pages": [f"/projects/{p}/", f"/review/images/{i}/", f"/review/images/{i}/history/",
                          f"/projects/{p}/dashboard/"],
        "admin_pages": [f"/projects/{p}/export/coco.json", f"/projects/{p}/export/masks.zip", f"/projects/{p}/models/"],
        "restore": f"/review/images/{i}/masks/1/restore/",
        "requeue": f"/review/images/{i}/requeue/",
        "api_project": [f"/api/projects/{p}/", f"/api/projects/{p}/images/", f"/api/images/{i}/",
                        f"/api/images/{i}/image", f"/api/predictions/{image.predictions.first().pk}/heatmap.png",
                        f"/api/masks/{model_mask.pk}/mask.png", f"/api/images/{i}/reference.png",
                        f"/api/candidate-masks/{candidate.pk}/mask.png"],
        "api_admin": [f"/api/projects/{p}/export/coco/", f"/api/projects/{p}/export/png/",
                      f"/api/projects/{p}/export/coco/?format=polygon&status=pending",
                      f"/api/projects/{p}/training-runs/", f"/api/training-runs/{run.pk}/",
                      f"/api/projects/{p}/model-versions/"],
        "api_restore": f"/api/images/{i}/masks/1/restore/",
        "api_requeue": f"/api/images/{i}/requeue/",
        "upload": f"/api/projects/{p}/uploads/",
        "image": image,
    }
    urls["decisions"] = [f"/review/images/{i}/approve/", f"/review/images/{i}/reject/", urls["restore"],
                         urls["requeue"]]
    urls["api_decisions"] = [f"/api/images/{i}/approve/", f"/api/images/{i}/reject/", urls["api_restore"],
                             urls["api_requeue"], f"/api/images/{i}/masks/"]
    urls["api"] = urls["api_project"] + ["/api/review/queue/"]
    return urls


def answers(call, urls, status):
    """Each of the urls answers `call(url)` with this status."""
    for url in urls:
        assert call(url).status_code == status, url


def test_anonymous_users_are_sent_to_login_and_the_api_answers_401(team, urls):
    from django.test import Client
    from rest_framework.test import APIClient

    client = Client()
    for url in urls["pages"] + urls["admin_pages"]:
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith("/accounts/login/"), url
    for url in urls["decisions"]:
        assert client.post(url).status_code == 302
    api = APIClient()
    answers(api.get, urls["api"] + urls["api_admin"] + ["/api/projects/"], 401)
    answers(api.post, urls["api_decisions"] + [urls["upload"]], 401)


def test_outsiders_see_nothing_of_a_project_they_do_not_belong_to(team, urls):
    client, api = team.client(team.outsider), team.api(team.outsider)
    for url in urls["project_pages"] + urls["decisions"]:
        response = client.post(url) if url in urls["decisions"] else client.get(url)
        assert response.status_code in (403, 404), url
    answers(api.get, urls["api_project"], 404)
    answers(api.post, urls["api_decisions"], 404)
    # The admins-only pages and endpoints too: one policy, so an outsider never learns that the project exists.
    answers(client.get, urls["admin_pages"], 404)
    answers(api.get, urls["api_admin"], 404)
    answers(api.post, [urls["upload"]], 404)
    assert urls["image"].original_name not in client.get("/review/").content.decode()
    assert [p["name"] for p in api.get("/api/projects/").json()["results"]] == ["Elsewhere"]
    assert api.get("/api/review/queue/").json()["count"] == 0


def test_viewers_can_look_but_not_decide_upload_or_export(team, urls):
    client, api = team.client(team.viewer), team.api(team.viewer)
    answers(client.get, urls["pages"], 200)
    answers(api.get, urls["api"], 200)
    answers(client.get, urls["admin_pages"], 403)
    answers(client.post, urls["decisions"], 403)
    answers(api.post, urls["api_decisions"], 403)
    assert api.post(urls["upload"]).status_code == 403
    page = client.get(f"/review/images/{urls['image'].pk}/").content.decode()
    assert "You can view this project but not review it" in page
    assert 'data-editable="false"' in page and 'data-action="save"' not in page  # the editor only zooms and pans


def test_radiologists_review_but_do_not_upload_or_export(team, urls):
    client, api = team.client(team.radiologist), team.api(team.radiologist)
    answers(client.get, urls["pages"], 200)
    answers(client.get, urls["admin_pages"], 403)
    answers(api.get, urls["api_admin"], 403)
    assert api.post(urls["upload"]).status_code == 403
    assert api.post(urls["api_decisions"][0]).status_code == 200


@pytest.mark.parametrize("role", ["radiologist", "admin"])
def test_radiologists_and_admins_restore_versions_and_send_rejected_images_back(team, urls, role):
    user = getattr(team, role)
    client, api = team.client(user), team.api(user)
    image_page = f"/review/images/{urls['image'].pk}/"
    assert api.post(urls["api_restore"], {"parent_version": 2}).status_code == 201
    response = client.post(urls["restore"], {"parent_version": 3})
    assert response.status_code == 302 and response.url == image_page
    assert urls["image"].masks.count() == 4
    # Only a rejected image goes back to the queue: for a pending one the request itself is refused.
    assert api.post(urls["api_requeue"]).status_code == 400
    assert client.post(urls["requeue"]).status_code == 302
    assert not urls["image"].reviews.exists()
    assert api.post(urls["api_decisions"][1]).status_code == 200
    assert api.post(urls["api_requeue"]).status_code == 200
    assert client.post(urls["decisions"][1]).status_code == 302
    response = client.post(urls["requeue"])
    assert response.status_code == 302 and response.url == image_page
    assert urls["image"].reviews.filter(decision="requeued").count() == 2


def test_admins_reach_everything_including_the_django_admin(team, urls):
    client, api = team.client(team.admin), team.api(team.admin)
    answers(client.get, urls["pages"] + urls["admin_pages"], 200)
    answers(api.get, urls["api"] + urls["api_admin"], 200)
    for model in ("project", "membership", "study", "job", "image", "prediction", "mask"):
        assert client.get(f"/admin/annotator/{model}/").status_code == 200, model
    assert client.get("/admin/review/review/").status_code == 200


def test_api_token_authentication_works_for_scripts(team):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    token = Token.objects.create(user=team.radiologist)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get(f"/api/projects/{team.project.pk}/").json()["name"] == "BUSI"
