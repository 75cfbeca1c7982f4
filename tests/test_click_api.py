"""Correcting a mask in a few clicks: the refine endpoint redraws the posted mask around the clicks, with the
checkpoint's learned refiner where it has one and GrabCut otherwise, for those who may edit masks only, and refuses
unusable clicks and masks with the reason. It never stores anything."""
import io
import json
import logging
import threading

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from annotator.masks.refine import file_gray_cached, project_refiner, refiner_cached, refiners_warm
from annotator.models import Mask, ModelVersion
from tests.conftest import png_bytes
from tests.factories import annotated_image, mask_png

SIZE = (160, 120)
CENTRE, RADIUS = (80, 60), 25
STRIPE = (100, 20, 140, 40)  # x1, y1, x2, y2: a false region beside the lesion


def disc() -> np.ndarray:
    ys, xs = np.mgrid[:SIZE[1], :SIZE[0]]
    return (xs - CENTRE[0]) ** 2 + (ys - CENTRE[1]) ** 2 <= RADIUS ** 2


@pytest.fixture
def image(team, tmp_path):
    """A noisy grey scan with a dark disc for the lesion, as in ultrasound."""
    noise = np.random.default_rng(0).normal(0, 8, (SIZE[1], SIZE[0]))
    path = tmp_path / "disc.png"
    PILImage.fromarray((np.where(disc(), 60, 180) + noise).clip(0, 255).astype(np.uint8)).save(path)
    return annotated_image(team.project, "disc.png", picture=path, box=(0, 0, 10, 10))


@pytest.fixture
def grabcut(settings, tmp_path):
    """ENSEMBLE_DIR a checkpoint whose manifest names no click refiner (as the demo's did before it had one)."""
    manifest = json.loads((settings.ENSEMBLE_DIR / "manifest.json").read_text())
    manifest.pop("refiner", None)
    folder = tmp_path / "without-refiner"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    settings.ENSEMBLE_DIR = folder


def refine(client, image, clicks, mask=None):
    body = {"clicks": clicks if isinstance(clicks, str) else json.dumps(clicks)}
    if mask is not None:
        body["mask"] = SimpleUploadedFile("mask.png", mask if isinstance(mask, bytes) else mask_png(mask),
                                          content_type="image/png")
    return client.post(f"/api/images/{image.pk}/refine/", body, format="multipart")


def answer_mask(response) -> np.ndarray:
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "image/png"
    return np.asarray(PILImage.open(io.BytesIO(response.content))) > 0


def click(x, y, positive=True):
    return {"x": x, "y": y, "positive": positive}


def test_a_positive_click_on_an_empty_mask_outlines_the_lesion_around_it(team, image, grabcut):
    response = refine(team.api(team.radiologist), image, [click(*CENTRE)])
    mask = answer_mask(response)
    assert response["X-Refiner"] == "grabcut"  # where the checkpoint has no learned refiner
    assert mask.shape == (SIZE[1], SIZE[0]) and mask[CENTRE[1], CENTRE[0]]
    lesion = disc()
    assert (mask & lesion).sum() / (mask | lesion).sum() > 0.8


def test_a_negative_click_removes_a_false_region_of_the_mask_sent(team, image, grabcut):
    drawn = disc()
    x1, y1, x2, y2 = STRIPE
    drawn[y1:y2, x1:x2] = True
    mask = answer_mask(refine(team.api(team.radiologist), image, [click(120, 30, positive=False)], mask=drawn))
    assert not mask[30, 120] and mask[CENTRE[1], CENTRE[0]]
    assert mask[y1:y2, x1:x2].sum() < 0.2 * (x2 - x1) * (y2 - y1)


def test_every_click_of_the_session_counts_the_image_is_decoded_once_and_nothing_is_stored(team, image, grabcut):
    file_gray_cached.cache_clear()
    api = team.api(team.admin)
    first = answer_mask(refine(api, image, [click(*CENTRE)]))
    both = answer_mask(refine(api, image, [click(*CENTRE), click(CENTRE[0], CENTRE[1] - 10, positive=False)],
                              mask=first))
    assert not both[CENTRE[1] - 10, CENTRE[0]] and both[CENTRE[1], CENTRE[0]]
    assert (file_gray_cached.cache_info().misses, file_gray_cached.cache_info().hits) == (1, 1)
    assert image.masks.count() == 1  # only the model's


def promote_a_version_with_a_small_refiner(project, folder, settings):
    import torch

    from ml.checkpoint import weights_save
    from ml.config import SegmenterConfig
    from ml.interactive import REFINER_NAME, refiner_from_member
    from ml.segment import segmenter_build

    torch.manual_seed(0)
    config = SegmenterConfig(input_size=64)
    folder.mkdir()
    weights_save(refiner_from_member(segmenter_build(config)).state_dict(), folder / REFINER_NAME, "float32")
    manifest = json.loads((settings.ENSEMBLE_DIR / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "refiner": config.__dict__}))
    project.model_version = ModelVersion.objects.create(project=project, name="v2", folder=str(folder))
    project.save()


def test_the_learned_refiner_of_the_promoted_model_version_answers_where_it_has_one(team, image, tmp_path, settings):
    promote_a_version_with_a_small_refiner(team.project, tmp_path / "finetuned", settings)

    response = refine(team.api(team.radiologist), image, [click(*CENTRE)])
    assert response["X-Refiner"] == "learned"
    assert answer_mask(response)[CENTRE[1], CENTRE[0]]  # the pixels under a click end as it says, whatever the net


def test_admins_and_radiologists_refine_viewers_are_refused_outsiders_see_nothing(team, image):
    from rest_framework.test import APIClient

    clicks = [click(*CENTRE)]
    assert refine(team.api(team.admin), image, clicks).status_code == 200
    assert refine(team.api(team.radiologist), image, clicks).status_code == 200
    assert refine(team.api(team.viewer), image, clicks).status_code == 403
    assert refine(team.api(team.outsider), image, clicks).status_code == 404
    assert refine(APIClient(), image, clicks).status_code == 401
    session = team.client(team.radiologist)  # the editor's own way in: the session cookie (and its CSRF token)
    response = session.post(f"/api/images/{image.pk}/refine/", {"clicks": json.dumps(clicks)})
    assert response.status_code == 200 and response["Content-Type"] == "image/png"


@pytest.mark.parametrize("clicks, mask, field, reason", [
    ("[{\"x\": 1,", None, "clicks", "not JSON"),
    ("[" * 100000, None, "clicks", "not JSON"),
    ('{"x": 1, "y": 2, "positive": true}', None, "clicks", "Expected a list"),
    ("[]", None, "clicks", "may not be empty"),
    ([{"x": 10, "positive": True}], None, "clicks", "click 1: y: This field is required."),
    ([click(10, 10), click("left", 10)], None, "clicks", "click 2: x: A valid number is required."),
    ([click(10, None)], None, "clicks", "click 1: y: This field may not be null."),
    ([click(10, 10), 7], None, "clicks", "click 2: Invalid data"),
    ([None], None, "clicks", "click 1: This field may not be null."),
    ([click(160, 10)], None, "clicks", "click 1 at (160, 10) lies outside the 160x120 image"),
    ([click(10, -1)], None, "clicks", "lies outside"),
    ([click(10, 10)] * 101, None, "clicks", "at most 100 clicks at a time, got 101"),
    ([click(10, 10)], png_bytes(SIZE[0] + 1, SIZE[1]), "mask", "the mask is 161x120 but the image is 160x120"),
    ([click(10, 10)], b"GIF89a not a png", "mask", "not a PNG image"),
])
def test_unusable_clicks_or_masks_are_refused_with_the_reason_and_nothing_is_stored(team, image, clicks, mask, field,
                                                                                    reason):
    response = refine(team.api(team.radiologist), image, clicks, mask=mask)
    assert response.status_code == 400
    assert reason in " ".join(response.json()[field])
    assert Mask.objects.count() == 1


def test_a_request_without_clicks_is_refused_naming_the_field(team, image):
    response = team.api(team.radiologist).post(f"/api/images/{image.pk}/refine/", {}, format="multipart")
    assert response.status_code == 400 and response.json()["clicks"] == ["This field is required."]


def warm_in_a_thread():
    """As the web server does it at start: in a thread of its own, with its own database connection."""
    refiner_cached.cache_clear()
    thread = threading.Thread(target=refiners_warm)
    thread.start()
    thread.join()


@pytest.mark.django_db(transaction=True)
def test_the_web_server_loads_every_refiner_in_use_before_the_first_click(team, tmp_path, settings, grabcut):
    promote_a_version_with_a_small_refiner(team.project, tmp_path / "finetuned", settings)
    warm_in_a_thread()
    assert refiner_cached.cache_info().misses == 2  # the promoted version's and ENSEMBLE_DIR's (for new projects)
    assert project_refiner(team.project) is not None
    assert refiner_cached.cache_info().misses == 2  # the first click found it loaded


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_that_cannot_be_loaded_is_logged_and_the_others_still_load(team, tmp_path, settings, caplog):
    promote_a_version_with_a_small_refiner(team.project, tmp_path / "finetuned", settings)
    settings.ENSEMBLE_DIR = tmp_path / "deleted"
    with caplog.at_level(logging.ERROR, logger="annotator.masks.refine"):
        warm_in_a_thread()
    assert [record.getMessage() for record in caplog.records] == [
        f"the click refiner of {tmp_path / 'deleted'} could not be loaded"]
    assert refiner_cached.cache_info().currsize == 1


@pytest.mark.parametrize("warm", [True, False])
def test_each_web_worker_warms_the_refiners_in_the_background_unless_told_not_to(settings, monkeypatch, warm):
    from config import gunicorn

    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda thread: started.append(thread.name))
    settings.REFINER_WARM = warm
    gunicorn.post_worker_init(worker=None)
    assert started == (["refiners-warm"] if warm else [])
