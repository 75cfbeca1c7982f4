"""/healthz and /readyz: no login, cheap, and a 503 that names what is not ready."""
import json
import shutil

import pytest
from django.test import Client

from annotator import health


def test_healthz_answers_anyone_without_touching_the_database(db, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_probes_get_through_whatever_host_they_call_but_pages_still_check_it():
    client = Client(HTTP_HOST="172.18.0.5:8000")  # a container probe, not a name in ALLOWED_HOSTS
    assert client.get("/healthz").status_code == 200
    assert client.get("/accounts/login/").status_code == 400


@pytest.mark.django_db
def test_readyz_is_200_with_every_check_when_all_is_up():
    response = Client().get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "ensemble"}
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())


@pytest.mark.django_db
def test_readyz_is_503_naming_a_broker_it_cannot_reach(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["broker"] and body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] and body["checks"]["ensemble"]["ok"]
    assert "127.0.0.1" not in response.content.decode()  # details go to the log, not to anonymous callers
    assert body["checks"]["broker"]["ms"] < health.BROKER_TIMEOUT_SECONDS * 1000 + 500


@pytest.mark.django_db
def test_readyz_is_503_naming_a_missing_ensemble_folder(settings, tmp_path):
    settings.ENSEMBLE_DIR = tmp_path / "no-such-ensemble"
    response = Client().get("/readyz")
    assert response.status_code == 503 and response.json()["failed"] == ["ensemble"]


@pytest.mark.django_db
def test_readyz_is_503_when_a_weight_file_of_the_manifest_is_missing(settings, tmp_path):
    shutil.copy(settings.ENSEMBLE_DIR / "manifest.json", tmp_path / "manifest.json")
    architectures = json.loads((tmp_path / "manifest.json").read_text())["architectures"]
    for name in architectures[:-1]:  # all but the last member's weights
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    settings.ENSEMBLE_DIR = tmp_path
    response = Client().get("/readyz")
    assert response.status_code == 503 and response.json()["failed"] == ["ensemble"]
