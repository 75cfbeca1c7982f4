"""The API's OpenAPI schema documents every endpoint, and Schemathesis, fuzzing the live server from that schema as
an admin, finds no server error (5xx) on any of them."""
import os
import subprocess
import sys
from pathlib import Path

from django.urls import get_resolver

from tests.conftest import ROOT
from tests.factories import annotated_image

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "var" / "test-artifacts"))
UNDOCUMENTED = {"api/schema/", "api/docs/"}  # the schema and its viewer


def api_routes():
    """Every /api/ route as the schema writes it: `<int:pk>` becomes `{id}` (drf-spectacular's name for a pk)."""
    import re

    def walk(patterns, prefix=""):  # each app's urls.py is included from config/urls.py
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if hasattr(pattern, "url_patterns"):
                yield from walk(pattern.url_patterns, route)
            else:
                yield route

    return {"/" + re.sub(r"<int:(\w+)>", lambda m: "{id}" if m[1] == "pk" else "{" + m[1] + "}", route)
            for route in walk(get_resolver().url_patterns) if route.startswith("api/") and route not in UNDOCUMENTED}


def test_the_schema_documents_every_api_endpoint(team):
    schema = team.api(team.radiologist).get("/api/schema/?format=json").json()
    assert set(schema["paths"]) == api_routes()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], f"{method} {path} documents no response"
    assert team.client(team.radiologist).get("/api/docs/").status_code == 200
    from rest_framework.test import APIClient

    assert APIClient().get("/api/schema/").status_code == 401  # like the API it describes


def test_schemathesis_finds_no_server_error_on_any_endpoint(team, live_server, transactional_db, tmp_path):
    from rest_framework.authtoken.models import Token

    from review.services import image_reject

    annotated_image(team.project, "first.png", flagged=True)
    image_reject(annotated_image(team.project, "second.png"), team.admin)
    token = Token.objects.create(user=team.admin).key
    report = ARTIFACTS / "schemathesis"
    result = subprocess.run(
        [Path(sys.executable).parent / "schemathesis", "run", f"{live_server.url}/api/schema/?format=json",
         "--header", f"Authorization: Token {token}", "--checks", "not_a_server_error",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "12", "--seed", "1", "--workers", "1",
         "--request-timeout", "60", "--report", "junit", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache folder lands in tmp_path
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
