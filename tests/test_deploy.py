"""The Docker deployment: docker-compose.yml against the Compose Specification's schema (vendored in tests/data, so
no network and no Docker are needed), health checks, the GPU reservation, no secrets in the files, and an
.env.example that lists every environment variable config/settings.py reads."""
import ast
import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|KEY")
INTERPOLATION = re.compile(r"^\$\{[A-Z_]+:\?[^}]*\}$")  # ${NAME:?message}: compose refuses to start without it


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def env_example() -> dict[str, str]:
    """Each NAME=value line of .env.example, set or commented out (a commented one documents a default)."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(re.match(r"#? ?([A-Z][A-Z0-9_]*)=(.*)", line).groups() for line in lines
                if re.match(r"#? ?[A-Z][A-Z0-9_]*=", line))


def env_example_set() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"[A-Z][A-Z0-9_]*=", line))


def settings_env_names() -> set[str]:
    """The variables config/settings.py and config/gunicorn.py read: os.environ.get / os.getenv / os.environ[...] /
    env_bool / env_int."""
    readers = {"os.environ.get", "os.getenv", "env_bool", "env_int"}
    names = set()
    sources = ((ROOT / "config" / name).read_text() for name in ("settings.py", "gunicorn.py"))
    for node in (node for source in sources for node in ast.walk(ast.parse(source))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in readers:
            key = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            key = node.slice
        else:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
    return names


def test_the_compose_file_follows_the_compose_specification(compose, validator):
    validator.validate(compose)
    misspelt = {**compose, "services": {**compose["services"], "web": {**compose["services"]["web"], "helthcheck": {}}}}
    assert not validator.is_valid(misspelt)  # the schema does catch mistakes


def test_every_service_has_a_health_check(compose):
    services = compose["services"]
    assert set(services) == {"web", "worker", "worker-cpu", "beat", "db", "redis"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    assert "http://127.0.0.1:8000/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for worker in ("worker", "worker-cpu"):
        assert "inspect ping" in " ".join(services[worker]["healthcheck"]["test"])
    assert "celerybeat-schedule" in " ".join(services["beat"]["healthcheck"]["test"])


def test_the_gpu_worker_reserves_a_gpu_and_the_cpu_worker_runs_the_same_command_without(compose):
    gpu, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu and cpu["command"] == gpu["command"] and cpu["image"] == gpu["image"]
    assert (gpu["profiles"], cpu["profiles"]) == (["gpu"], ["cpu"])
    assert env_example_set()["COMPOSE_PROFILES"] in ("gpu", "cpu")


def test_web_and_workers_share_one_image_and_the_media_volume(compose):
    services = compose["services"]
    for name in ("web", "worker", "worker-cpu", "beat"):
        assert services[name]["image"] == "weak-to-pixel" and "media:/data" in services[name]["volumes"], name
    assert {"media", "pgdata", "redisdata"} <= set(compose["volumes"])


def test_no_secret_is_written_in_the_compose_file_or_the_example_env(compose):
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.match(value), f"{name}: {key} must come from .env"
            for password in re.findall(r"://[^:/@]+:([^@]+)@", value):  # credentials inside a URL
                assert INTERPOLATION.match(password), f"{name}: the password in {key} must come from .env"
    example = env_example_set()
    assert example["SECRET_KEY"] == "" and example["POSTGRES_PASSWORD"] == ""  # each must be chosen per install
    assert ".env" in (ROOT / ".dockerignore").read_text().split()  # the real one never goes into the image


def test_env_example_lists_every_variable_the_settings_read():
    names = settings_env_names()
    assert {"SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "LOG_FORMAT"} <= names  # the parser finds them
    assert names - set(env_example()) == set()


def test_the_image_and_the_demo_serve_through_pinned_gunicorn_and_the_image_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    served = "gunicorn --config config/gunicorn.py config.wsgi"
    makefile = (ROOT / "Makefile").read_text()
    assert "manage.py collectstatic" in dockerfile and served in dockerfile and served in makefile
    assert "runserver" not in makefile
    assert re.search(r"^gunicorn==[\d.]+", (ROOT / "requirements.txt").read_text(), re.MULTILINE)


def settings_from(env: dict[str, str], tmp_path) -> dict:
    """Settings as config/settings.py computes them from `env` alone, in a fresh interpreter."""
    names = ["DEBUG", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
             "LOG_FORMAT", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT", "AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME"]
    code = ("import json, config.settings as s; "
            f"print(json.dumps({{n: getattr(s, n, None) for n in {names}}} | "
            "{'SECURE_PROXY_SSL_HEADER': getattr(s, 'SECURE_PROXY_SSL_HEADER', None)}, default=str))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={"PATH": os.environ["PATH"], "VAR_DIR": str(tmp_path), **env})
    return json.loads(result.stdout)


def test_the_example_env_gives_a_production_configuration_without_debug(tmp_path):
    example = {**env_example_set(), "SECRET_KEY": "a-key-for-this-test"}
    loaded = settings_from(example, tmp_path)
    assert loaded["DEBUG"] is False and loaded["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == [] and loaded["LOG_FORMAT"] == "plain"
    # Plain HTTP on this host until HTTPS is set up in front.
    assert not loaded["SESSION_COOKIE_SECURE"] and loaded["SECURE_PROXY_SSL_HEADER"] is None


def test_https_settings_secure_the_cookies_and_trust_the_proxy_header(tmp_path):
    loaded = settings_from({"SECURE_COOKIES": "1", "TRUST_X_FORWARDED_PROTO": "1",
                            "CSRF_TRUSTED_ORIGINS": "https://annotator.example.org"}, tmp_path)
    assert loaded["SESSION_COOKIE_SECURE"] and loaded["CSRF_COOKIE_SECURE"]
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == ["https://annotator.example.org"]


def test_hsts_and_the_https_redirect_are_off_unless_the_environment_turns_them_on(tmp_path):
    plain = settings_from({}, tmp_path)
    assert (plain["SECURE_HSTS_SECONDS"], plain["SECURE_SSL_REDIRECT"]) == (0, False)  # the demo runs on plain HTTP
    https = settings_from({"SECURE_HSTS_SECONDS": "31536000", "SECURE_SSL_REDIRECT": "1"}, tmp_path)
    assert (https["SECURE_HSTS_SECONDS"], https["SECURE_SSL_REDIRECT"]) == (31536000, True)


def test_login_throttling_defaults_to_ten_failures_and_a_fifteen_minute_cool_off_set_from_the_environment(tmp_path):
    default = settings_from({}, tmp_path)
    assert (default["AXES_FAILURE_LIMIT"], default["AXES_COOLOFF_TIME"]) == (10, "0:15:00")
    stricter = settings_from({"LOGIN_FAILURE_LIMIT": "5", "LOGIN_COOLOFF_MINUTES": "60"}, tmp_path)
    assert (stricter["AXES_FAILURE_LIMIT"], stricter["AXES_COOLOFF_TIME"]) == (5, "1:00:00")
    assert settings_from({"LOGIN_COOLOFF_MINUTES": "0"}, tmp_path)["AXES_COOLOFF_TIME"] is None  # locked until unlocked
