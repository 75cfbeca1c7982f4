"""Refine benchmark: what one request of the editor's clicks tool costs, GrabCut and learned refiner, against a save.

    .venv/bin/python -m bench.refine [--requests 40]

It runs in a database of its own, made by Django's test-database machinery (`annotator_bench_refine` on the server
of DATABASE_URL, or a temporary SQLite file without one) and dropped at the end, with its media in a temporary
folder. One real BUSI scan of the demo (320x272) is stored twice, in two projects: one uses ENSEMBLE_DIR (the demo
checkpoint, whose click refiner answers where it has one), the other a model version whose manifest names no
refiner (GrabCut answers). Through Django's test client, in this process, it then sends in turns: a refinement of
the proposal's mask with three clicks on the lesion to each, and the **baseline**, a mask save (`POST
/api/images/{id}/masks/`) of the same mask PNG on the same image, measured in the same run. The first request of
each refiner is timed apart: it pays for importing torch and OpenCV, or for loading the refiner. Not a test: the
figures depend on the machine; the ratios are measured in the same run.
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCAN = ROOT / "demo" / "busi" / "images" / "benign_002.png"  # 320x272, the lesion about (70, 135)-(140, 170)
PROPOSAL = (60, 130, 130, 165)  # the mask the refinement starts from: a box a little off the lesion
CLICKS = [{"x": 105, "y": 152, "positive": True}, {"x": 135, "y": 160, "positive": True},
          {"x": 65, "y": 135, "positive": False}]
TEST_DATABASE = "annotator_bench_refine"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="timed requests of each kind, after the first")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-refine-"))
    os.environ.update(MEDIA_ROOT=str(work / "media"), CELERY_BROKER_URL="memory://localhost/", LOG_LEVEL="WARNING",
                      DJANGO_SETTINGS_MODULE="config.settings")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client's host name is allowed
    test_name = TEST_DATABASE if connection.vendor == "postgresql" else str(work / "bench.sqlite3")
    connection.settings_dict["TEST"] = {**connection.settings_dict.get("TEST", {}), "NAME": test_name}
    real_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        first, times, refiners = _run(args.requests, work)
    finally:
        connection.creation.destroy_test_db(real_name, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)
    _print(first, times, refiners, args.requests)


def _run(count: int, work: Path):
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from annotator.models import ModelVersion, Project
    from annotator.png import png_encode

    admin = get_user_model().objects.create_user("admin", password="bench-password-1234", is_staff=True)
    manifest = json.loads((Path(settings.ENSEMBLE_DIR) / "manifest.json").read_text())
    manifest.pop("refiner", None)
    plain = work / "without-refiner"
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps(manifest))
    images = {}
    for name, folder in (("GrabCut", plain), ("checkpoint", None)):
        project = Project.objects.create(name=name, classes=["normal", "lesion"], healthy_class="normal")
        if folder is not None:
            project.model_version = ModelVersion.objects.create(project=project, name="plain", folder=str(folder))
            project.save()
        images[name] = _scan_store(project)
    api = APIClient()
    api.force_authenticate(admin)
    proposal = png_encode(_proposal())
    refiners = {}

    def refine(name):
        body = {"clicks": json.dumps(CLICKS), "mask": SimpleUploadedFile("mask.png", proposal)}
        response = api.post(f"/api/images/{images[name].pk}/refine/", body, format="multipart")
        assert response.status_code == 200, response.content[:300]
        refiners[name] = response["X-Refiner"]

    def save():
        image = images["GrabCut"]
        body = {"file": SimpleUploadedFile("mask.png", proposal), "parent_version": image.masks.count()}
        assert api.post(f"/api/images/{image.pk}/masks/", body, format="multipart").status_code == 201

    kinds = {"refine, GrabCut": lambda: refine("GrabCut"), "refine, checkpoint": lambda: refine("checkpoint"),
             "mask save (baseline)": save}
    first = {name: _ms(run) for name, run in kinds.items()}  # GrabCut first: it pays for importing torch
    times = {name: [] for name in kinds}
    for _ in range(count):
        for name, run in kinds.items():
            times[name].append(_ms(run))
    return first, times, refiners


def _proposal():
    import numpy as np

    mask = np.zeros((272, 320), dtype=bool)
    x1, y1, x2, y2 = PROPOSAL
    mask[y1:y2, x1:x2] = True
    return mask


def _scan_store(project):
    """The scan as an annotated image of the project, with the proposal as its first mask version."""
    from django.core.files.base import ContentFile
    from django.utils import timezone

    from annotator.masks.services import mask_create
    from annotator.models import Image, Mask

    data = SCAN.read_bytes()
    image = Image(project=project, sha256=hashlib.sha256(data).hexdigest(), original_name=SCAN.name, width=320,
                  height=272, annotated_at=timezone.now(), model_version="bench", predicted_label="lesion")
    image.file.save(SCAN.name, ContentFile(data), save=False)
    image.save()
    mask_create(image, _proposal(), Mask.Source.MODEL, model_version="bench")
    return image


def _ms(run) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def _print(first: dict, times: dict, refiners: dict, count: int) -> None:
    import torch
    from django.db import connection

    database = "PostgreSQL" if connection.vendor == "postgresql" else "SQLite"
    print(f"{count} requests of each kind in turns, a 320x272 BUSI scan, 3 clicks and the mask, Django's test client "
          f"in one process ({database}, torch threads {torch.get_num_threads()})")
    if refiners["checkpoint"] != "learned":
        print("the checkpoint (ENSEMBLE_DIR) has no learned click refiner: GrabCut answered both refinements")
    baseline = statistics.median(times["mask save (baseline)"])
    print(f"{'':>22}  {'first ms':>8}  {'median ms':>9}  {'p95 ms':>7}  {'vs baseline':>11}")
    for name, values in times.items():
        label = "refine, learned" if name == "refine, checkpoint" and refiners["checkpoint"] == "learned" else name
        values = sorted(values)
        median = statistics.median(values)
        print(f"{label:>22}  {first[name]:8.0f}  {median:9.1f}  {values[int(0.95 * (len(values) - 1))]:7.1f}  "
              f"{median / baseline:10.1f}x")


if __name__ == "__main__":
    main()
