"""What every response tells the browser (Content-Security-Policy, Permissions-Policy), and logins refused for a
while after too many wrong passwords in a row (django-axes)."""
import re
from datetime import timedelta

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.conftest import PASSWORD, ROOT


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


def test_pages_and_the_api_send_a_content_security_policy_and_a_permissions_policy(team):
    responses = [Client().get("/accounts/login/"), team.client(team.radiologist).get("/"),
                 team.client(team.admin).get(f"/projects/{team.project.pk}/"),
                 team.api(team.radiologist).get("/api/projects/"), team.client(team.radiologist).get("/api/docs/")]
    for response in responses:
        assert response.status_code == 200
        policy = directives(response)
        assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"]  # no inline script, no eval
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        features = {f.strip() for f in response["Permissions-Policy"].split(",")}
        assert {"camera=()", "microphone=()", "geolocation=()"} <= features


def test_no_page_has_an_inline_script_the_policy_would_block(team):
    """script-src 'self' runs only scripts from files: every <script> of the templates has a src."""
    for template in (ROOT / "templates").rglob("*.html"):
        for tag in re.findall(r"<script\b[^>]*>", template.read_text()):
            assert "src=" in tag, f"{template.relative_to(ROOT)}: {tag}"
    docs = team.client(team.radiologist).get("/api/docs/")
    scripts = re.findall(r"<script\b[^>]*>", docs.content.decode())
    assert scripts and all("src=" in tag for tag in scripts)
    init = re.search(r'<script src="(/api/docs/\?[^"]+)"', docs.content.decode())[1].replace("&amp;", "&")
    response = team.client(team.radiologist).get(init)  # Swagger UI's start-up script, served as a file
    assert response.status_code == 200 and "SwaggerUIBundle(" in response.content.decode()


def login(client, username, password):
    return client.post("/accounts/login/", {"username": username, "password": password})


@pytest.fixture
def failure_limit(settings):
    settings.AXES_FAILURE_LIMIT = 3
    return settings.AXES_FAILURE_LIMIT


def test_wrong_passwords_in_a_row_lock_the_login_for_that_user_and_address_for_the_cool_off(team, failure_limit):
    client = Client(REMOTE_ADDR="192.0.2.1")
    for _ in range(failure_limit - 1):
        response = login(client, "radiologist", "wrong")
        assert response.status_code == 200 and "did not match" in response.content.decode()
    for _ in range(2):  # the failure that reaches the limit, and any try after it
        locked = login(client, "radiologist", "wrong")
        assert locked.status_code == 429 and "Too many failed logins (3 in a row)" in locked.content.decode()
        assert "try again in 15 minutes" in " ".join(locked.content.decode().split())
    right = login(client, "radiologist", PASSWORD)
    assert right.status_code == 429 and "_auth_user_id" not in client.session  # even the right password

    assert login(Client(REMOTE_ADDR="192.0.2.2"), "radiologist", PASSWORD).status_code == 302  # another address
    assert login(Client(REMOTE_ADDR="192.0.2.1"), "viewer", PASSWORD).status_code == 302  # another user
    token = Token.objects.create(user=team.radiologist)
    api = APIClient(REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/projects/").status_code == 200  # API tokens are no password: not locked

    from axes.models import AccessAttempt

    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    assert login(client, "radiologist", PASSWORD).status_code == 302  # the cool-off is over


def test_a_successful_login_starts_the_count_again(team, failure_limit):
    client = Client(REMOTE_ADDR="192.0.2.1")
    for _ in range(failure_limit - 1):
        login(client, "radiologist", "wrong")
    assert login(client, "radiologist", PASSWORD).status_code == 302
    client.logout()
    for _ in range(failure_limit - 1):
        assert login(client, "radiologist", "wrong").status_code == 200
    assert login(client, "radiologist", PASSWORD).status_code == 302
