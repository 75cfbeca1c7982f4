"""The radiologist's day: mask versions and restoring them, correcting the diagnosis, approving exactly what was
seen, and sending a rejected image back to the queue."""
import numpy as np
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotator.models import Image, Mask
from annotator.masks.selectors import MaskSummary, mask_latest, mask_summary
from annotator.masks.services import mask_array, mask_create
from annotator.tallies import image_tally_add
from review.selectors import review_queue
from review.models import Review
from tests.factories import annotated_image, box_mask

MODEL_BOX = box_mask((40, 30), (5, 5, 20, 15))  # the factory's model mask


def drawn_version(image, user, box=(0, 0, 10, 10)):
    return mask_create(image, box_mask((40, 30), box), Mask.Source.HUMAN, author=user,
                       parent=image.masks.order_by("-version").first())


def stored_state(image):
    """Every version's row and file bytes, to show that nothing earlier changes."""
    return [(m.pk, m.version, m.parent_id, m.restored_from_id, m.source, m.author_id, m.pixels, m.file.name,
             file_bytes(m)) for m in image.masks.order_by("version")]


def file_bytes(mask):
    with mask.file.open("rb") as f:
        return f.read()


def messages_of(response):
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def test_restoring_adds_a_human_version_with_the_old_pixels_and_changes_nothing_else(team):
    image = annotated_image(team.project)
    drawn = drawn_version(image, team.radiologist)
    before = stored_state(image)
    response = team.api(team.radiologist).post(f"/api/images/{image.pk}/masks/1/restore/", {"parent_version": 2})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["version"], body["source"], body["author"]) == (3, "human", "radiologist")
    assert (body["parent"], body["restored_from"]) == (drawn.pk, 1)
    restored = image.masks.get(version=3)
    assert np.array_equal(mask_array(restored), MODEL_BOX) and restored.pixels == MODEL_BOX.sum()
    assert stored_state(image)[:2] == before
    assert team.api(team.radiologist).get(f"/api/images/{image.pk}/").json()["masks"][2]["restored_from"] == 1


def test_restoring_from_the_page_returns_to_the_image_with_a_message(team):
    image = annotated_image(team.project)
    drawn_version(image, team.radiologist)
    response = team.client(team.radiologist).post(f"/review/images/{image.pk}/masks/1/restore/",
                                                  {"parent_version": 2})
    assert response.status_code == 302 and response.url == f"/review/images/{image.pk}/"
    assert messages_of(response) == [("success", "Version 1 restored as version 3.")]
    assert mask_latest(image).restored_from.version == 1


def test_restoring_on_a_stale_version_is_refused_and_stores_nothing(team):
    image = annotated_image(team.project)
    drawn_version(image, team.radiologist)
    drawn_version(image, team.admin, box=(3, 3, 8, 8))  # saved while the radiologist looked at version 2
    before = stored_state(image)
    stale = team.api(team.radiologist).post(f"/api/images/{image.pk}/masks/1/restore/", {"parent_version": 2})
    assert stale.status_code == 409
    assert stale.json()["latest_version"] == 3 and "nothing was restored" in stale.json()["detail"]
    response = team.client(team.radiologist).post(f"/review/images/{image.pk}/masks/1/restore/",
                                                  {"parent_version": 2})
    assert response.status_code == 302
    [(level, text)] = messages_of(response)
    assert level == "error" and "version 3 is now the latest" in text
    assert stored_state(image) == before


def test_the_latest_version_cannot_be_restored_onto_itself(team):
    image = annotated_image(team.project)
    response = team.api(team.radiologist).post(f"/api/images/{image.pk}/masks/1/restore/")
    assert response.status_code == 400 and "already the latest" in response.json()["detail"]
    assert team.api(team.radiologist).post(f"/api/images/{image.pk}/masks/9/restore/").status_code == 404
    assert image.masks.count() == 1


def test_history_page_lists_every_version_and_offers_restore_only_to_reviewers(team):
    image = annotated_image(team.project)
    drawn_version(image, team.radiologist)
    team.api(team.admin).post(f"/api/images/{image.pk}/masks/1/restore/", {"parent_version": 2})
    team.api(team.admin).post(f"/api/images/{image.pk}/approve/", {"mask": image.masks.get(version=2).pk})

    page = team.client(team.radiologist).get(f"/review/images/{image.pk}/history/")
    assert [m.version for m in page.context["masks"]] == [1, 2, 3]
    html = page.content.decode()
    for mask in image.masks.all():
        assert f"/api/masks/{mask.pk}/mask.png" in html
    for author in ("the ensemble", "radiologist", "admin"):
        assert f"<dt>Author</dt><dd>{author}</dd>" in html
    assert html.count("<dt>Source</dt><dd>human</dd>") == 2 and "<dt>Model version</dt><dd>test@0</dd>" in html
    assert html.count('<span class="badge">latest</span>') == 1 and html.count("badge approved") == 1
    assert "<dt>Restored from</dt><dd>v1</dd>" in html
    assert html.count("Restore this version") == 2  # on versions 1 and 2, not on the latest
    assert html.count('name="parent_version" value="3"') == 2

    viewer_page = team.client(team.viewer).get(f"/review/images/{image.pk}/history/")
    assert viewer_page.status_code == 200 and "Restore this version" not in viewer_page.content.decode()


def test_image_page_links_to_the_versions_and_preselects_the_diagnosis(team):
    image = annotated_image(team.project)
    drawn_version(image, team.radiologist)
    client = team.client(team.radiologist)
    html = client.get(f"/review/images/{image.pk}/").content.decode()
    assert f'href="/review/images/{image.pk}/history/">Versions (<span data-version-count>2</span>)</a>' in html
    assert 'id="approve-mask-version" value="2"' in html
    assert '<option value="lesion" selected>' in html and '<option value="normal">' in html
    Image.objects.filter(pk=image.pk).update(reviewed_label="normal")
    html = client.get(f"/review/images/{image.pk}/").content.decode()
    assert '<option value="normal" selected>' in html and "Radiologist's diagnosis: <b>normal</b>" in html


def test_the_image_page_reads_its_masks_in_one_query_the_newest_the_models_and_the_count(team):
    image = annotated_image(team.project)  # version 1, the model's
    drawn_version(image, team.radiologist)
    drawn_version(image, team.radiologist)
    with CaptureQueriesContext(connection) as captured:
        summary = mask_summary(image)

    assert len(captured) == 1
    assert (summary.latest.version, summary.latest.source, summary.versions) == (3, Mask.Source.HUMAN, 3)
    assert (summary.latest_of_model.version, summary.latest_of_model.source) == (1, Mask.Source.MODEL)
    html = team.client(team.radiologist).get(f"/review/images/{image.pk}/").content.decode()
    assert "Proposal (model, v1)" in html and 'id="approve-mask-version" value="3"' in html
    bare = annotated_image(team.project, "bare.png")
    bare.masks.all().delete()
    assert mask_summary(bare) == MaskSummary(None, None, 0)


def test_label_correction_is_stored_on_the_image_and_in_the_audit_trail(team):
    approved = annotated_image(team.project, "a.png")
    rejected = annotated_image(team.project, "r.png")
    client = team.client(team.radiologist)
    client.post(f"/review/images/{approved.pk}/approve/",
                {"mask_version": 1, "label": "normal", "comment": "a cyst, not a lesion"})
    response = team.api(team.radiologist).post(f"/api/images/{rejected.pk}/reject/", {"label": "lesion"})
    assert response.status_code == 200 and response.json()["reviewed_label"] == "lesion"
    approved.refresh_from_db()
    assert (approved.review_status, approved.reviewed_label, approved.predicted_label) == ("approved", "normal",
                                                                                          "lesion")
    assert list(Review.objects.order_by("id").values_list("decision", "label", "comment")) == [
        ("approved", "normal", "a cyst, not a lesion"), ("rejected", "lesion", "")]
    html = client.get(f"/review/images/{approved.pk}/").content.decode()
    assert "approved v1 as normal" in html  # differs from the prediction
    assert " as lesion" not in client.get(f"/review/images/{rejected.pk}/").content.decode()


def test_a_label_outside_the_projects_classes_is_refused_and_nothing_changes(team):
    image = annotated_image(team.project)
    response = team.api(team.radiologist).post(f"/api/images/{image.pk}/approve/", {"label": "tumour"})
    assert response.status_code == 400 and "choose one of normal, lesion" in response.json()["detail"]
    assert team.api(team.radiologist).post(f"/api/images/{image.pk}/reject/", {"label": "tumour"}).status_code == 400
    response = team.client(team.radiologist).post(f"/review/images/{image.pk}/approve/",
                                                  {"mask_version": 1, "label": "tumour"})
    assert response.status_code == 302 and response.url == f"/review/images/{image.pk}/"
    assert messages_of(response)[0][0] == "error"
    image.refresh_from_db()
    assert (image.review_status, image.reviewed_label, image.reviewed_by) == ("pending", "", None)
    assert not Review.objects.exists()


def test_approving_from_the_page_approves_the_version_shown_and_refuses_a_stale_one(team):
    image = annotated_image(team.project)
    client = team.client(team.radiologist)
    drawn_version(image, team.admin)  # saved while the radiologist still looked at version 1
    response = client.post(f"/review/images/{image.pk}/approve/", {"mask_version": 1})
    assert response.status_code == 302 and response.url == f"/review/images/{image.pk}/"
    [(level, text)] = messages_of(response)
    assert level == "error" and "version 2 is now the latest" in text and "nothing was approved" in text
    image.refresh_from_db()
    assert image.review_status == "pending" and image.approved_mask is None and not Review.objects.exists()

    client.post(f"/review/images/{image.pk}/approve/", {"mask_version": 2})
    image.refresh_from_db()
    assert image.review_status == "approved" and image.approved_mask.version == 2
    assert client.post(f"/review/images/{image.pk}/approve/", {"mask_version": "two"}).status_code == 400


def test_requeue_puts_a_rejected_image_back_in_the_queue(team):
    image = annotated_image(team.project)
    client = team.client(team.radiologist)
    client.post(f"/review/images/{image.pk}/reject/", {"label": "normal"})
    assert image not in review_queue(team.radiologist)
    assert "Send back to the queue" in client.get(f"/review/images/{image.pk}/").content.decode()
    assert "Send back to the queue" not in team.client(team.viewer).get(f"/review/images/{image.pk}/").content.decode()

    response = client.post(f"/review/images/{image.pk}/requeue/", {"comment": "second opinion"})
    assert response.status_code == 302 and response.url == f"/review/images/{image.pk}/"
    assert messages_of(response)[0][0] == "success"
    image.refresh_from_db()
    assert (image.review_status, image.approved_mask, image.reviewed_by) == ("pending", None, team.radiologist)
    assert image.reviewed_label == "normal"
    assert list(image.reviews.order_by("id").values_list("decision", "comment")) == [
        ("rejected", ""), ("requeued", "second opinion")]
    assert list(review_queue(team.radiologist)) == [image]
    assert [i["id"] for i in team.api(team.radiologist).get("/api/review/queue/").json()["results"]] == [image.pk]
    assert "Send back to the queue" not in client.get(f"/review/images/{image.pk}/").content.decode()


def test_requeue_is_refused_for_an_image_that_was_not_rejected(team):
    pending = annotated_image(team.project, "p.png")
    approved = annotated_image(team.project, "a.png")
    team.api(team.radiologist).post(f"/api/images/{approved.pk}/approve/")
    for image, status in ((pending, "pending"), (approved, "approved")):
        response = team.api(team.radiologist).post(f"/api/images/{image.pk}/requeue/")
        assert response.status_code == 400 and f"this one is {status}" in response.json()["detail"]
    response = team.client(team.radiologist).post(f"/review/images/{pending.pk}/requeue/")
    assert messages_of(response) == [("error", "only a rejected image can go back to the queue; this one is pending")]
    approved.refresh_from_db()
    assert approved.review_status == "approved" and approved.approved_mask.version == 1
    assert list(Review.objects.values_list("decision", flat=True)) == ["approved"]


def test_a_version_others_build_on_cannot_be_deleted_but_a_whole_project_can(team):
    import pytest
    from django.db.models import RestrictedError

    from annotator.models import ModelVersion, Project
    from review.services import image_approve

    image = annotated_image(team.project)
    drawn = drawn_version(image, team.radiologist)
    image_approve(image, team.radiologist, comment="ok")
    with pytest.raises(RestrictedError):
        image.masks.get(version=1).delete()  # version 2 was drawn on it: history is never cut
    team.project.model_version = ModelVersion.objects.create(project=team.project, name="ft-1", folder="/x")
    team.project.save()

    team.project.delete()
    assert not Project.objects.filter(pk=team.project.pk).exists()
    assert not Mask.objects.filter(pk=drawn.pk).exists() and not Review.objects.exists()


def test_a_first_drawing_names_version_zero_so_two_first_saves_cannot_both_win(team):
    from tests.factories import mask_png

    image = Image.objects.create(project=team.project, sha256="e" * 64, original_name="new.png", width=40, height=30)
    image_tally_add(image)
    api = team.api(team.radiologist)

    def save(box):
        upload = SimpleUploadedFile("mask.png", mask_png(box_mask((40, 30), box)), content_type="image/png")
        return api.post(f"/api/images/{image.pk}/masks/", {"parent_version": 0, "file": upload}, format="multipart")

    assert save((0, 0, 10, 10)).status_code == 201
    second = save((20, 20, 30, 30))
    assert second.status_code == 409 and second.json()["latest_version"] == 1
    assert list(image.masks.values_list("version", flat=True)) == [1]


def test_an_api_approval_names_the_version_it_saw_and_gets_409_when_a_newer_one_came(team):
    image = annotated_image(team.project)
    drawn_version(image, team.admin)
    api = team.api(team.radiologist)
    stale = api.post(f"/api/images/{image.pk}/approve/", {"mask_version": 1})
    assert stale.status_code == 409 and stale.json()["latest_version"] == 2
    image.refresh_from_db()
    assert image.review_status == "pending" and not Review.objects.exists()
    assert api.post(f"/api/images/{image.pk}/approve/", {"mask_version": 2}).json()["approved_mask"] == \
        image.masks.get(version=2).pk
