"""Bad query parameters and form fields on the pages get a 400 or a message, never a server error: a project that is
no number, a NUL byte (PostgreSQL stores none), a version number too long for int(). The API answers 400."""
from django.test import Client

from annotator.models import Image
from review.models import Review
from tests.conftest import PASSWORD
from tests.factories import annotated_image

NUL = "a\x00b"
HUGE = "9" * 5000  # past Python's 4300 digits for int()


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_queue_page_names_a_bad_filter_and_applies_the_others(team):
    annotated_image(team.project, "lesion.png")
    client = team.client(team.radiologist)
    for params, field in (({"project": "abc"}, "project"), ({"label": NUL}, "label"), ({"min": "abc"}, "min"),
                          ({"max": "inf"}, "max"), ({"reviewer": NUL}, "reviewer"), ({"status": "lost"}, "status")):
        response = client.get("/review/", params)
        assert response.status_code == 200, params
        assert any(f"{field}:" in text for text in messages_of(response)), (params, messages_of(response))
    response = client.get("/review/", {"min": "abc", "label": "normal"})  # the good filter still applies
    assert response.context["count"] == 0 and "lesion.png" not in response.content.decode()
    assert client.get("/review/", {"min": "abc"}).context["count"] == 1


def test_taking_the_next_image_with_a_bad_project_or_skip_answers_400(team):
    annotated_image(team.project, "first.png")
    client = team.client(team.radiologist)
    for query in ("project=abc", f"project={NUL}", f"skip={HUGE}", "skip=x"):
        assert client.post(f"/review/next/?{query}").status_code == 400, query
    assert not Image.objects.filter(claimed_by__isnull=False).exists()
    assert client.post(f"/review/next/?project={team.project.pk}").status_code == 302


def test_decision_and_restore_forms_refuse_nul_bytes_and_overlong_versions_with_400(team):
    image = annotated_image(team.project, "first.png")
    client = team.client(team.radiologist)
    refused = [("approve", {"comment": NUL}), ("approve", {"mask_version": HUGE}), ("approve", {"label": NUL}),
               ("reject", {"comment": NUL}), ("masks/1/restore", {"parent_version": HUGE})]
    for action, form in refused:
        assert client.post(f"/review/images/{image.pk}/{action}/", form).status_code == 400, (action, form)
    image.refresh_from_db()
    assert image.review_status == Image.ReviewStatus.PENDING and not Review.objects.exists()
    assert image.masks.count() == 1
    assert team.client(team.outsider).post(f"/review/images/{image.pk}/approve/",
                                           {"mask_version": HUGE}).status_code == 404  # who asks comes first
    client.post(f"/review/images/{image.pk}/reject/")
    assert client.post(f"/review/images/{image.pk}/requeue/", {"comment": NUL}).status_code == 400
    assert client.post(f"/review/images/{image.pk}/requeue/", {"comment": "second look"}).status_code == 302
    assert Review.objects.filter(comment="second look").exists()


def test_the_queue_api_answers_400_to_a_project_that_is_no_number(team):
    api = team.api(team.radiologist)
    response = api.get("/api/review/queue/", {"project": "abc"})
    assert response.status_code == 400 and "project" in response.json()
    assert api.get("/api/review/queue/", {"project": team.project.pk}).status_code == 200


def test_a_login_with_a_user_name_longer_than_any_account_is_refused_like_a_wrong_password(team):
    response = Client().post("/accounts/login/", {"username": "x" * 300, "password": PASSWORD})
    assert response.status_code == 200 and "did not match" in response.content.decode()
