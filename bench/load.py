"""Load benchmark: the pages and endpoints a review team hits, under 50 concurrent clients, with 10 000 images.

    .venv/bin/python -m bench.load [--images 10000] [--connections 50] [--seconds 15]

It creates its own PostgreSQL database (`annotator_bench_load`, on the server of DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/postgres), migrates it, seeds a project of `--images` annotated images (three
predictions and a model mask each), serves the app with gunicorn on loopback and drives it with wrk (Debian's
package `wrk`): the review queue page, image pages (random images), the API image list and mask saves (random
images, PNG uploads through the API with a token). The baseline in the same run is the login page, which touches no
project data: each endpoint's requests/s is printed against it. Queries per request are counted in-process with
Django's test client. The database is dropped at the end (`--keep` keeps it). Not a test: the figures depend on the
machine.
"""
import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "annotator_bench_load"
PNG_SIZE = 64

# wrk prints one JSON line at the end of each run; `request` is filled in per scenario.
LUA = """
math.randomseed(os.time())
{setup}
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
    + summary.errors.status
  io.write(string.format('RESULT {{"requests": %d, "seconds": %f, "errors": %d, "p50": %f, "p95": %f, '
    .. '"p99": %f}}\\n', summary.requests, summary.duration / 1e6, errors, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_urls() -> tuple[str, str]:
    """The server's maintenance database and the benchmark's own, from DATABASE_URL."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if not base.startswith("postgres"):
        sys.exit("the load benchmark needs PostgreSQL: set DATABASE_URL=postgres://...")
    server = base.rsplit("/", 1)[0]
    return f"{server}/postgres", f"{server}/{DATABASE}"


def database_recreate(maintenance_url: str, drop_only=False) -> None:
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        if not drop_only:
            connection.execute(f'CREATE DATABASE "{DATABASE}"')


def png(value=0, size=PNG_SIZE) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def seed(count: int) -> dict:
    """A project of `count` annotated images sharing one small file each for image, heatmaps and mask."""
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import connection
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from annotator.models import Image, Mask, Membership, Prediction, Project

    users = get_user_model().objects
    radiologist = users.create_user("radiologist", password="bench-password-1234")
    project = Project.objects.create(name="Load", classes=["normal", "lesion"], healthy_class="normal")
    Membership.objects.create(project=project, user=radiologist, role=Membership.Role.RADIOLOGIST)
    picture = default_storage.save("images/bench.png", ContentFile(png(90)))
    heatmap = default_storage.save("heatmaps/bench.png", ContentFile(png(128)))
    mask = default_storage.save("masks/bench.png", ContentFile(png(255)))
    now = timezone.now()
    for start in range(0, count, 2000):
        images = Image.objects.bulk_create([
            Image(project=project, sha256=f"{i:064x}", file=picture, original_name=f"scan{i}.png", width=PNG_SIZE,
                  height=PNG_SIZE, annotated_at=now, model_version="bench", predicted_label="lesion",
                  uncertainty=(i % 1000) / 1000, flagged=i % 3 == 0, flag_reason="models disagree" if i % 3 == 0 else "")
            for i in range(start, min(count, start + 2000))])
        Prediction.objects.bulk_create([
            Prediction(image=image, architecture=arch, model_version="bench", label="lesion", agrees=True,
                       probabilities=[0.3, 0.7], std=[0.05, 0.05], entropy=0.8, mutual_information=0.01,
                       heatmap=heatmap, cam_class="lesion")
            for image in images for arch in ("resnet50", "efficientnet_lite0", "densenet121")])
        Mask.objects.bulk_create([Mask(image=image, version=1, source="model", model_version="bench", file=mask,
                                       pixels=PNG_SIZE * PNG_SIZE) for image in images])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would after a bulk load: the planner needs the real row counts
    ids = list(project.images.order_by("id").values_list("id", flat=True))
    return {"project": project.pk, "first": ids[0], "last": ids[-1], "user": radiologist,
            "token": Token.objects.create(user=radiologist).key}


def session_cookie(user) -> str:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def scenarios(data: dict, cookie: str) -> dict[str, tuple[str, str]]:
    """Name → (path wrk starts from, Lua setting up each request)."""
    first, last, token = data["first"], data["last"], data["token"]
    boundary = "benchboundary"
    body = (f"--{boundary}\\r\\nContent-Disposition: form-data; name=\\\"file\\\"; filename=\\\"mask.png\\\"\\r\\n"
            f"Content-Type: image/png\\r\\n\\r\\n" + "".join(f"\\{b:03d}" for b in png(255))
            + f"\\r\\n--{boundary}--\\r\\n")
    return {
        "login page (baseline)": ("/accounts/login/", ""),
        "review queue page": ("/review/", f'wrk.headers["Cookie"] = "{cookie}"'),
        "image page": ("/", f'wrk.headers["Cookie"] = "{cookie}"\n'
                            f'request = function() return wrk.format("GET", "/review/images/" .. '
                            f'math.random({first}, {last}) .. "/") end'),
        "API image list": (f"/api/projects/{data['project']}/images/?page=2",
                           f'wrk.headers["Authorization"] = "Token {token}"'),
        "mask save (API)": ("/", f'wrk.headers["Authorization"] = "Token {token}"\n'
                                 f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"\n'
                                 f'local body = "{body}"\n'
                                 f'request = function() return wrk.format("POST", "/api/images/" .. '
                                 f'math.random({first}, {last}) .. "/masks/", nil, body) end'),
    }


def queries_per_request(data: dict, cookie: str) -> dict[str, int]:
    """Each endpoint once through Django's test client, counting its queries."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Token {data['token']}")
    client.cookies.load(cookie)
    middle = (data["first"] + data["last"]) // 2
    requests = {
        "login page (baseline)": lambda: Client().get("/accounts/login/"),
        "review queue page": lambda: client.get("/review/"),
        "image page": lambda: client.get(f"/review/images/{middle}/"),
        "API image list": lambda: client.get(f"/api/projects/{data['project']}/images/?page=2"),
        "mask save (API)": lambda: client.post(f"/api/images/{middle}/masks/",
                                               {"file": SimpleUploadedFile("mask.png", png(255))}),
    }
    counts = {}
    for name, send in requests.items():
        with CaptureQueriesContext(connection) as captured:
            response = send()
        assert response.status_code in (200, 201), (name, response.status_code)
        counts[name] = len(captured)
    return counts


def server_wait(port: int, workers: int) -> None:
    """Until every worker has booted: each answers one request (they import Django and the app lazily)."""
    from urllib.request import urlopen

    deadline = time.monotonic() + 120
    answered = 0
    while answered < workers * 2:
        try:
            urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=30).read()
            answered += 1
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("gunicorn did not start")
            time.sleep(0.3)


def wrk(url: str, lua: str, connections: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.format(setup=lua))
    try:
        output = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "30s",
                                 "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    return json.loads(output.split("RESULT ", 1)[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=15, help="per endpoint")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")

    maintenance_url, bench_url = database_urls()
    database_recreate(maintenance_url)
    media = Path(tempfile.mkdtemp(prefix="bench-media-"))
    os.environ.update(DATABASE_URL=bench_url, MEDIA_ROOT=str(media), DJANGO_SETTINGS_MODULE="config.settings",
                      LOG_LEVEL="WARNING", ALLOWED_HOSTS="127.0.0.1,testserver")
    import django

    django.setup()
    from django.core.management import call_command

    server = None
    try:
        call_command("migrate", verbosity=0)
        started = time.monotonic()
        data = seed(args.images)
        print(f"seeded {args.images} images (3 predictions and a mask each) in {time.monotonic() - started:.0f} s")
        cookie = session_cookie(data["user"])
        queries = queries_per_request(data, cookie)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
                                   "--workers", str(args.workers), "--log-level", "warning"],
                                  cwd=ROOT, env=os.environ.copy())
        server_wait(port, args.workers)
        results = {name: wrk(f"http://127.0.0.1:{port}{path}", lua, args.connections, args.seconds)
                   for name, (path, lua) in scenarios(data, cookie).items()}
    finally:
        if server:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        if not args.keep:
            from django.db import connections

            connections.close_all()
            database_recreate(maintenance_url, drop_only=True)
        shutil.rmtree(media, ignore_errors=True)

    baseline = results["login page (baseline)"]
    baseline_rate = baseline["requests"] / baseline["seconds"]
    print(f"{args.connections} concurrent clients (wrk), {args.seconds} s each, gunicorn with {args.workers} "
          f"workers, {args.images} images in PostgreSQL, {os.cpu_count()} CPU cores shared by server, database and wrk")
    print(f"{'':>22} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'queries':>7} "
          f"{'vs baseline':>11}")
    for name, r in results.items():
        rate = r["requests"] / r["seconds"]
        print(f"{name:>22} {rate:7.1f} {r['p50']:7.0f} {r['p95']:7.0f} {r['p99']:7.0f} {r['errors']:6d} "
              f"{queries[name]:7d} {rate / baseline_rate:10.2f}x")


if __name__ == "__main__":
    main()
