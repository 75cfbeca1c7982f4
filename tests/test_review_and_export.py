"""Mask versions, approve/reject, the queue order, and exports that round-trip through pycocotools."""
import io
import json
import zipfile

import numpy as np
from PIL import Image as PILImage
from pycocotools.coco import COCO

from annotator.models import Image, Mask
from annotator.masks.services import mask_array
from review.models import Review
from tests.factories import annotated_image, box_mask, mask_png


def upload_mask(client, image, mask, parent_version):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(f"/api/images/{image.pk}/masks/",
                       {"file": SimpleUploadedFile("m.png", mask_png(mask), "image/png"),
                        "parent_version": parent_version}, format="multipart")


def test_queue_lists_flagged_first_then_most_uncertain(team):
    annotated_image(team.project, "calm.png", uncertainty=0.9, flagged=False)
    annotated_image(team.project, "doubtful.png", uncertainty=0.4, flagged=True)
    annotated_image(team.project, "very.png", uncertainty=0.8, flagged=True)
    names = [i["original_name"] for i in team.api(team.radiologist).get("/api/review/queue/").json()["results"]]
    assert names == ["very.png", "doubtful.png", "calm.png"]
    page = team.client(team.radiologist).get("/review/").content.decode()
    assert page.index("very.png") < page.index("doubtful.png") < page.index("calm.png")


def test_saving_a_mask_adds_a_version_and_keeps_the_models(team):
    image = annotated_image(team.project)
    drawn = box_mask((40, 30), (0, 0, 10, 10))
    response = upload_mask(team.api(team.radiologist), image, drawn, parent_version=1)
    assert response.status_code == 201, response.content
    assert (response.json()["version"], response.json()["source"]) == (2, "human")
    versions = list(image.masks.order_by("version"))
    assert [m.source for m in versions] == ["model", "human"] and versions[1].parent == versions[0]
    assert np.array_equal(mask_array(versions[1]), drawn)
    assert np.array_equal(mask_array(versions[0]), box_mask((40, 30), (5, 5, 20, 15)))


def test_saving_on_a_stale_version_answers_409_and_loses_nothing(team):
    image = annotated_image(team.project)
    client = team.api(team.radiologist)
    assert upload_mask(client, image, box_mask((40, 30), (0, 0, 5, 5)), 1).status_code == 201
    stale = upload_mask(client, image, box_mask((40, 30), (9, 9, 19, 19)), 1)
    assert stale.status_code == 409
    assert stale.json()["latest_version"] == 2 and "reload" in stale.json()["detail"]
    assert image.masks.count() == 2


def test_bad_masks_are_refused_with_a_reason(team):
    image = annotated_image(team.project)
    client = team.api(team.radiologist)
    wrong_size = upload_mask(client, image, np.zeros((10, 10), dtype=bool), 1)
    assert wrong_size.status_code == 400 and "10x10" in wrong_size.json()["file"][0]
    from django.core.files.uploadedfile import SimpleUploadedFile

    garbage = client.post(f"/api/images/{image.pk}/masks/",
                          {"file": SimpleUploadedFile("m.png", b"garbage", "image/png")}, format="multipart")
    assert garbage.status_code == 400 and garbage.json()["file"] == ["not a PNG image"]
    assert image.masks.count() == 1


def test_a_text_file_as_a_mask_is_refused_in_words_without_python_internals(team):
    from django.core.files.uploadedfile import SimpleUploadedFile

    image = annotated_image(team.project)
    response = team.api(team.radiologist).post(f"/api/images/{image.pk}/masks/", {
        "file": SimpleUploadedFile("notes.png", b"filename,label\nscan.png,lesion\n", "image/png")}, format="multipart")
    assert response.status_code == 400 and response.json()["file"] == ["not a PNG image"]
    assert image.masks.count() == 1


def test_approve_records_who_and_when_and_reject_sends_nothing_to_export(team):
    approved = annotated_image(team.project, "a.png")
    rejected = annotated_image(team.project, "r.png")
    client = team.client(team.radiologist)
    response = client.post(f"/review/images/{approved.pk}/approve/", {"comment": "good outline"})
    assert response.status_code == 302
    client.post(f"/review/images/{rejected.pk}/reject/", {"comment": "lesion missed"})
    approved.refresh_from_db()
    rejected.refresh_from_db()
    assert approved.review_status == "approved" and approved.reviewed_by == team.radiologist
    assert approved.reviewed_at is not None and approved.approved_mask.version == 1
    assert rejected.review_status == "rejected" and rejected.approved_mask is None
    assert list(Review.objects.values_list("decision", "comment").order_by("id")) == [
        ("approved", "good outline"), ("rejected", "lesion missed")]
    exported = team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/coco/")
    coco = json.loads(b"".join(exported.streaming_content))
    assert [i["file_name"] for i in coco["images"]] == ["a.png"]


def test_coco_and_png_exports_equal_the_approved_masks_pixel_for_pixel(team, tmp_path):
    images = [annotated_image(team.project, f"img{i}.png", size=(37 + i, 29), box=(i, 2, 20 + i, 17))
              for i in range(3)]
    healthy = annotated_image(team.project, "healthy.png", box=(0, 0, 0, 0))
    api = team.api(team.radiologist)
    upload_mask(api, images[0], box_mask((37, 29), (3, 3, 30, 9)) | box_mask((37, 29), (25, 20, 36, 28)), 1)
    for image in images + [healthy]:
        assert api.post(f"/api/images/{image.pk}/approve/").status_code == 200

    response = team.client(team.admin).get(f"/projects/{team.project.pk}/export/coco.json")
    path = tmp_path / "coco.json"
    path.write_bytes(b"".join(response.streaming_content))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == 3  # the healthy image has no annotation
    for image in images:
        image.refresh_from_db()
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[image.pk]))
        assert np.array_equal(coco.annToMask(annotation).astype(bool), mask_array(image.approved_mask))
        assert annotation["attributes"]["reviewer"] == "radiologist"
    assert images[0].approved_mask.version == 2

    archive = zipfile.ZipFile(io.BytesIO(b"".join(team.client(team.admin).get(
        f"/projects/{team.project.pk}/export/masks.zip").streaming_content)))
    index = json.loads(archive.read("index.json"))["images"]
    assert len(index) == 4
    for entry in index:
        stored = mask_array(Image.objects.get(pk=entry["image_id"]).approved_mask)
        exported = np.asarray(PILImage.open(io.BytesIO(archive.read(entry["mask"])))) > 0
        assert np.array_equal(exported, stored)


def test_image_page_shows_every_models_opinion_and_the_overlays(team):
    image = annotated_image(team.project, flagged=True)
    page = team.client(team.radiologist).get(f"/review/images/{image.pk}/").content.decode()
    for arch in ("resnet50", "efficientnet_b0", "densenet121"):
        assert f"{arch} XGrad-CAM" in page
    assert "Flagged for review" in page and "Approve mask v1" in page
    mask = Mask.objects.get(image=image)
    assert f"/masks/{mask.pk}/mask.png" in page
