"""The walking skeleton end to end, over HTTP, on PostgreSQL, with a real Celery worker on a real Redis broker:
upload → ensemble → queue → mask edit → approve → COCO and PNG exports equal to the stored masks."""
import io
import json
import time
import zipfile

import numpy as np
import pytest
import requests
from django.conf import settings
from django.db import connection
from PIL import Image as PILImage
from pycocotools.coco import COCO

from annotator.models import Image, Job, Mask, Prediction
from annotator.masks.services import mask_array
from tests.conftest import PASSWORD, real_images, zip_of
from tests.factories import box_mask, mask_png

JOB_TIMEOUT_S = 300


@pytest.fixture
def celery_worker(transactional_db):
    """A real worker thread consuming from Redis, as `make test` configures it."""
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun
    from django.db import connections
    from redis import Redis

    from config.celery import app

    assert connection.vendor == "postgresql", "integration tests run on PostgreSQL: use `make test`"
    assert app.conf.broker_url.startswith("redis://"), "integration tests need a Redis broker: use `make test`"
    Redis.from_url(app.conf.broker_url).flushdb()  # the test database of Redis: no stale messages from other runs
    # The worker thread's own database connection must not outlive the test, or the test database cannot be dropped.
    close_connections = lambda **kwargs: connections.close_all()  # noqa: E731
    task_postrun.connect(close_connections, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="INFO", shutdown_timeout=60):
            yield
    finally:
        task_postrun.disconnect(close_connections)


def token_session(live_server, user):
    from rest_framework.authtoken.models import Token

    session = requests.Session()
    session.headers["Authorization"] = f"Token {Token.objects.create(user=user).key}"
    return session


def browser_session(live_server, username):
    session = requests.Session()
    login = f"{live_server.url}/accounts/login/"
    session.get(login)
    response = session.post(login, data={"username": username, "password": PASSWORD,
                                         "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                            headers={"Referer": login})
    assert response.url == f"{live_server.url}/", "login failed"
    return session


def test_upload_to_approved_mask_and_exports(team, live_server, celery_worker, tmp_path):
    admin = token_session(live_server, team.admin)
    radiologist = token_session(live_server, team.radiologist)
    url = live_server.url
    project = team.project.pk

    # 1. An admin uploads a zip of real images with their labels.
    images = real_images(2)
    archive = zip_of({path.name: path.read_bytes() for path, _ in images}, {p.name: label for p, label in images})
    response = admin.post(f"{url}/api/projects/{project}/uploads/", files={"file": ("busi.zip", archive)})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    # 2. The worker runs the ensemble; the job reports its progress until it is done.
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := admin.get(f"{url}/api/jobs/{job_id}/").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"job still {job['status']} after {JOB_TIMEOUT_S}s"
        time.sleep(0.5)
    assert job["status"] == "done", job["failure"]
    assert (job["annotated"], job["total"], job["progress"]) == (4, 4, 1.0)

    # 3. Every image has three predictions with heatmaps and a model mask as version 1.
    listed = admin.get(f"{url}/api/projects/{project}/images/").json()["results"]
    assert len(listed) == 4
    for item in listed:
        detail = admin.get(f"{url}/api/images/{item['id']}/").json()
        assert {p["architecture"] for p in detail["predictions"]} == set(settings_architectures())
        for prediction in detail["predictions"]:
            assert abs(sum(prediction["probabilities"]) - 1) < 1e-4 and len(prediction["std"]) == 2
            heatmap = PILImage.open(io.BytesIO(admin.get(prediction["heatmap_url"]).content))
            assert heatmap.size == (detail["width"], detail["height"])
        assert [(m["version"], m["source"]) for m in detail["masks"]] == [(1, "model")]
        assert detail["flagged"] == bool(detail["flag_reason"])
        assert 0.0 <= detail["uncertainty"] <= 1.0
    assert Prediction.objects.count() == 12 and Mask.objects.count() == 4

    # 4. The radiologist's queue: flagged first, the most uncertain first; the queue page lists them too.
    queue = radiologist.get(f"{url}/api/review/queue/?project={project}").json()["results"]
    keys = [(q["flagged"], q["uncertainty"]) for q in queue]
    assert len(queue) == 4 and keys == sorted(keys, reverse=True)
    page = browser_session(live_server, "radiologist").get(f"{url}/review/?project={project}").text
    assert all(q["original_name"] in page for q in queue)

    # 5. The radiologist corrects one mask, then approves it and the model's mask of another.
    first, second = queue[0], queue[1]
    corrected = box_mask((first["width"], first["height"]), (20, 30, 120, 90))
    response = radiologist.post(f"{url}/api/images/{first['id']}/masks/", data={"parent_version": 1},
                                files={"file": ("mask.png", mask_png(corrected), "image/png")})
    assert response.status_code == 201 and response.json()["version"] == 2
    for item in (first, second):
        assert radiologist.post(f"{url}/api/images/{item['id']}/approve/").status_code == 200
    approved = Image.objects.filter(review_status="approved").select_related("approved_mask")
    assert {i.pk: i.approved_mask.version for i in approved} == {first["id"]: 2, second["id"]: 1}
    assert all(i.reviewed_by == team.radiologist and i.reviewed_at for i in approved)

    # 6. COCO export: pycocotools decodes exactly the stored masks; the PNG zip holds the same pixels.
    coco_path = tmp_path / "coco.json"
    coco_path.write_bytes(admin.get(f"{url}/api/projects/{project}/export/coco/").content)
    coco = COCO(str(coco_path))
    assert sorted(coco.getImgIds()) == sorted(i.pk for i in approved)
    for image in approved:
        stored = mask_array(image.approved_mask)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image.pk]))
        decoded = coco.annToMask(annotations[0]).astype(bool) if annotations else np.zeros_like(stored)
        assert np.array_equal(decoded, stored), image.original_name
    assert np.array_equal(mask_array(Image.objects.get(pk=first["id"]).approved_mask), corrected)
    masks_zip = zipfile.ZipFile(io.BytesIO(admin.get(f"{url}/api/projects/{project}/export/png/").content))
    for entry in json.loads(masks_zip.read("index.json"))["images"]:
        exported = np.asarray(PILImage.open(io.BytesIO(masks_zip.read(entry["mask"])))) > 0
        assert np.array_equal(exported, mask_array(Image.objects.get(pk=entry["image_id"]).approved_mask))
    assert Job.objects.get(pk=job_id).images.count() == 4


def settings_architectures():
    return json.loads((settings.ENSEMBLE_DIR / "manifest.json").read_text())["architectures"]
