"""Load benchmark: the pages and endpoints a review team hits, under 20 and 50 concurrent clients, on 10 000 images.

    .venv/bin/python -m bench.load [--images 10000,100000] [--connections 20,50] [--seconds 10] [--workers N] [--keep]

For each count of images it creates its own PostgreSQL database (`annotator_bench_load`, on the server of
DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres), migrates it and seeds one project of that many
annotated images waiting for review (three predictions, a model mask and two candidate masks each; all rows of a kind
share one small PNG on disk), with as many radiologists as the most clients asked for, each with a session and an
API token. It serves the app with gunicorn (config/gunicorn.py) on loopback and, for each count of clients, drives
each scenario below for `--seconds` with wrk (Debian's package `wrk`), every request as one of the radiologists drawn
at random:

    login page             the baseline, anonymous: it reads no project data
    review queue page      the first page of what waits
    take the next image    POST /review/next/ with the session's CSRF token; the redirect is not followed. Each POST
                           claims the queue's first image nobody else holds and releases the radiologist's earlier
                           claim; nothing is decided, so the queue never runs dry. A redirect to the queue page
                           (nothing claimed) counts as an error
    image page             a random image
    API image list         a page of 50 from a random place (a cursor after a random image)
    API one image          GET /api/images/{id}/, a random image
    mask save (API)        a PNG upload to a random image: each adds a mask version, kept for the later runs

Each table, one per count of images and of clients, gives per scenario: requests/s; latency p50, p95 and p99; errors
(wrk's socket errors and responses of status 400 and above, plus the redirects above); queries per request (one
request of each scenario beforehand, on a random image or page, counted in process through Django's handler); CPU
ms per request: the user + system time over the scenario, read from /proc (bench/cpu.py), divided by the requests
served, of the gunicorn master and workers (app) and of the PostgreSQL backends connected to the benchmark database
(db; the server's own processes, such as the WAL writer, checkpointer and autovacuum, are not counted, nor is wrk);
and requests/s against the baseline. At 20 clients it says
which scenarios meet the project's goal; with several counts of images, whether their figures hold from the smallest
count to the largest. The database is dropped at the end (`--keep` keeps the last one). Not a test: the figures
depend on the machine, whose cores wrk, gunicorn and PostgreSQL share.
"""
import argparse
import base64
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.cpu import CpuMeter, process_and_children, process_stat

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "annotator_bench_load"
PNG_SIZE = 64
SEED_BATCH = 2000
BASELINE = "login page (baseline)"
# The project's goal for the hot pages at 20 clients, and how much of it must hold with ten times the images.
GOAL_CONNECTIONS, GOAL_RATE, GOAL_P95_MS, GOAL_VS_BASELINE, GOAL_SCALING = 20, 200, 150, 0.25, 0.2

# Around each scenario's Lua: the radiologists, a random seed per thread, and one JSON line at the end with the
# errors of all threads (wrk's own and the `unexpected` responses a scenario counts).
LUA = """
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  math.randomseed(os.time() * 100 + id)
  unexpected = 0
end
{reviewers}
{script}
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
    + summary.errors.status
  for _, thread in ipairs(threads) do errors = errors + thread:get("unexpected") end
  io.write(string.format('RESULT {{"requests": %d, "seconds": %f, "errors": %d, "p50": %f, "p95": %f, '
    .. '"p99": %f}}\\n', summary.requests, summary.duration / 1e6, errors, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_urls(database: str = DATABASE) -> tuple[str, str]:
    """The server's maintenance database and the benchmark's own, from DATABASE_URL."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if not base.startswith("postgres"):
        sys.exit("the load benchmark needs PostgreSQL: set DATABASE_URL=postgres://...")
    server = base.rsplit("/", 1)[0]
    return f"{server}/postgres", f"{server}/{database}"


def database_recreate(maintenance_url: str, drop_only=False, database: str = DATABASE) -> None:
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if not drop_only:
            connection.execute(f'CREATE DATABASE "{database}"')


def png(value=0, size=PNG_SIZE) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def seed(count: int, reviewers: int) -> dict:
    """A project of `count` annotated pending images and `reviewers` radiologists, each logged in."""
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import connection
    from django.db.models import Max, Min
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from annotator.models import CandidateMask, Image, Mask, Membership, Prediction, Project
    from annotator.tallies import tallies_rebuild

    project = Project.objects.create(name="Load", classes=["normal", "lesion"], healthy_class="normal")
    # No password: the sessions below need none, and hashing one is slow on purpose.
    users = [get_user_model().objects.create_user(f"radiologist{n}") for n in range(reviewers)]
    Membership.objects.bulk_create([Membership(project=project, user=user, role=Membership.Role.RADIOLOGIST)
                                    for user in users])
    # Rows share files (the app never writes over one); only the sha256 must differ within a project.
    picture = default_storage.save("images/bench.png", ContentFile(png(90)))
    heatmap = default_storage.save("heatmaps/bench.png", ContentFile(png(128)))
    mask = default_storage.save("masks/bench.png", ContentFile(png(255)))
    candidate = default_storage.save("candidates/bench.png", ContentFile(png(255)))
    now = timezone.now()
    for start in range(0, count, SEED_BATCH):
        images = Image.objects.bulk_create([
            Image(project=project, sha256=f"{i:064x}", file=picture, original_name=f"scan{i}.png", width=PNG_SIZE,
                  height=PNG_SIZE, annotated_at=now, model_version="bench", predicted_label="lesion",
                  uncertainty=(i % 1000) / 1000, flagged=i % 3 == 0,
                  flag_reason="models disagree" if i % 3 == 0 else "")
            for i in range(start, min(count, start + SEED_BATCH))])
        Prediction.objects.bulk_create([
            Prediction(image=image, architecture=arch, model_version="bench", label="lesion", agrees=True,
                       probabilities=[0.3, 0.7], std=[0.05, 0.05], entropy=0.8, mutual_information=0.01,
                       heatmap=heatmap, cam_class="lesion")
            for image in images for arch in ("resnet50", "efficientnet_lite0", "densenet121")])
        Mask.objects.bulk_create([Mask(image=image, version=1, source="model", model_version="bench", file=mask,
                                       pixels=PNG_SIZE * PNG_SIZE) for image in images])
        # What an ensemble with a segmentation member stores beside its proposal, as the demo's does.
        CandidateMask.objects.bulk_create([
            CandidateMask(image=image, model_version="bench", source=source, proposed=source == "consensus",
                          file=candidate)
            for image in images for source in ("consensus", "segmentation")])
    tallies_rebuild([project])  # bulk_create bypasses the services that keep the per-state counts
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would after a bulk load: the planner needs the real row counts
    ids = project.images.aggregate(first=Min("id"), last=Max("id"))
    assert ids["last"] - ids["first"] + 1 == count, "image ids have gaps: the random ids would miss"
    return {"project": project.pk, "images": count, **ids, "users": users,
            "tokens": [Token.objects.create(user=user).key for user in users]}


def sessions(users) -> list[str]:
    """A session cookie per user, as a login would leave."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    cookies = []
    for user in users:
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={session.session_key}")
    return cookies


def csrf_secret() -> str:
    """The CSRF cookie a browser gets with the login form; Django also takes its value as the X-CSRFToken header."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.get("/accounts/login/")
    return client.cookies[settings.CSRF_COOKIE_NAME].value


# Take the next image: a redirect to anything but an image page means nothing could be claimed.
CLAIM_CHECK = """
response = function(status, headers, body)
  if status == 302 and not (headers["Location"] or ""):find("/review/images/", 1, true) then
    unexpected = unexpected + 1
  end
end"""


def cursor_after(image_id: int) -> str:
    """The API image list's `cursor` for the page after `image_id`, as DRF's CursorPagination writes it."""
    return urllib.parse.quote(base64.b64encode(f"p={image_id}".encode()).decode())


def scenarios(data: dict) -> dict[str, tuple[str, str]]:
    """Name → (path wrk starts from, its Lua script). Each request is made as `r`, a radiologist drawn at random."""
    reviewers = "reviewers = {" + ", ".join(
        f'{{cookie = "{cookie}; csrftoken={data["csrf"]}", token = "{token}"}}'
        for cookie, token in zip(data["cookies"], data["tokens"])) + f'}}\ncsrf = "{data["csrf"]}"'
    boundary = "benchboundary"
    body = (f"--{boundary}\\r\\nContent-Disposition: form-data; name=\\\"file\\\"; filename=\\\"mask.png\\\"\\r\\n"
            f"Content-Type: image/png\\r\\n\\r\\n" + "".join(f"\\{b:03d}" for b in png(255))
            + f"\\r\\n--{boundary}--\\r\\n")
    session, token = "{Cookie = r.cookie}", '{Authorization = "Token " .. r.token}'
    image = f'math.random({data["first"]}, {data["last"]})'
    rng = random.Random(0)
    cursors = ", ".join(f'"{cursor_after(rng.randint(data["first"], data["last"]))}"' for _ in range(1000))

    def request(method, path, headers, body="nil"):
        return (f"request = function()\n  local r = reviewers[math.random(#reviewers)]\n"
                f"  return wrk.format(\"{method}\", {path}, {headers}, {body})\nend")

    scripts = {
        BASELINE: ("/accounts/login/", ""),
        "review queue page": ("/", request("GET", '"/review/"', session)),
        "take the next image": ("/", request("POST", '"/review/next/"', '{Cookie = r.cookie, ["X-CSRFToken"] = csrf}')
                                + CLAIM_CHECK),
        "image page": ("/", request("GET", f'"/review/images/" .. {image} .. "/"', session)),
        "API image list": ("/", f"cursors = {{{cursors}}}\n" + request(
            "GET", f'"/api/projects/{data["project"]}/images/?cursor=" .. cursors[math.random(#cursors)]', token)),
        "API one image": ("/", request("GET", f'"/api/images/" .. {image} .. "/"', token)),
        "mask save (API)": ("/", f'local body = "{body}"\n' + request(
            "POST", f'"/api/images/" .. {image} .. "/masks/"',
            f'{{Authorization = "Token " .. r.token, ["Content-Type"] = "multipart/form-data; boundary={boundary}"}}',
            "body")),
    }
    return {name: (path, LUA.format(reviewers=reviewers, script=script)) for name, (path, script) in scripts.items()}


def scenario_senders(data: dict, rng: random.Random) -> dict:
    """Name → a function sending that scenario's request once in this process, through Django's whole middleware
    stack (the WSGI handler's get_response, as gunicorn calls it; CSRF checked as for a browser), on a random image
    or page; it exits unless the answer is the scenario's. For the queries per request here and for bench.pages."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import RequestFactory

    handler = WSGIHandler()
    browser = RequestFactory(enforce_csrf_checks=True)
    browser.cookies.load(f"{data['cookies'][0]}; csrftoken={data['csrf']}")
    script = RequestFactory(headers={"Authorization": f"Token {data['tokens'][0]}"})

    def image():
        return rng.randint(data["first"], data["last"])

    def send(request, expected, redirect_to=""):
        response = handler.get_response(request)
        response.close()  # as a WSGI server does: request_finished, the database connection kept or closed
        if response.status_code != expected or redirect_to not in response.get("Location", ""):
            sys.exit(f"{request.path} answered {response.status_code} {response.get('Location', '')}, not {expected} "
                     f"{redirect_to}")
        return response

    return {
        BASELINE: lambda: send(RequestFactory().get("/accounts/login/"), 200),
        "review queue page": lambda: send(browser.get("/review/"), 200),
        "take the next image": lambda: send(browser.post("/review/next/", headers={"X-CSRFToken": data["csrf"]}), 302,
                                            redirect_to="/review/images/"),  # claimed one, not "nothing waits"
        "image page": lambda: send(browser.get(f"/review/images/{image()}/"), 200),
        "API image list": lambda: send(
            script.get(f"/api/projects/{data['project']}/images/?cursor={cursor_after(image())}"), 200),
        "API one image": lambda: send(script.get(f"/api/images/{image()}/"), 200),
        "mask save (API)": lambda: send(script.post(f"/api/images/{image()}/masks/", {
            "file": SimpleUploadedFile("mask.png", png(255), content_type="image/png")}), 201),
    }


def queries_per_request(senders: dict) -> dict[str, int]:
    """Each scenario's request once, counting its queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = {}
    for name, send in senders.items():
        with CaptureQueriesContext(connection) as captured:
            send()
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


def backend_pids(connection):
    """The pids of the PostgreSQL backends serving the benchmark database, but for `connection`'s own, that run on
    this machine (with a remote server there are none, and the db column reads 0)."""
    def pids():
        rows = connection.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()
        return [pid for pid, in rows if (stat := process_stat(pid)) and stat[0] == "postgres"]
    return pids


def wrk(url: str, lua: str, connections: int, seconds: int, cpu_groups: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        with CpuMeter(cpu_groups) as cpu:
            run = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s",
                                  "--timeout", "30s", "-s", script.name, url], capture_output=True, text=True)
    finally:
        os.unlink(script.name)
    if run.returncode or "RESULT " not in run.stdout:
        sys.exit(f"wrk failed: {run.stderr or run.stdout}")
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    result.update({f"{name} ms": cpu.ms(name) / max(result["requests"], 1) for name in cpu_groups})
    return result


def table_print(results: dict, queries: dict, images: int, connections: int, args) -> None:
    baseline_rate = results[BASELINE]["requests"] / results[BASELINE]["seconds"]
    print(f"\n{images} images, {connections} concurrent clients (wrk), {args.seconds} s each, gunicorn with "
          f"{args.workers} processes (config/gunicorn.py), PostgreSQL; {os.cpu_count()} CPU cores shared by server, "
          "database and wrk")
    print(f"{'':>24} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'queries':>7} "
          f"{'CPU ms/req: app':>15} {'db':>5} {'vs baseline':>11}")
    for name, r in results.items():
        rate = r["requests"] / r["seconds"]
        print(f"{name:>24} {rate:7.1f} {r['p50']:7.0f} {r['p95']:7.0f} {r['p99']:7.0f} {r['errors']:6d} "
              f"{queries[name]:7d} {r['app ms']:15.1f} {r['db ms']:5.1f} {rate / baseline_rate:10.2f}x")
    if connections == GOAL_CONNECTIONS:
        missed = [name for name, r in results.items() if name != BASELINE and not (
            r["requests"] / r["seconds"] >= max(GOAL_RATE, GOAL_VS_BASELINE * baseline_rate)
            and r["p95"] <= GOAL_P95_MS)]
        print(f"goal ({GOAL_CONNECTIONS} clients: >= {GOAL_RATE} req/s, p95 <= {GOAL_P95_MS} ms, >= "
              f"{GOAL_VS_BASELINE}x the baseline): {'missed by ' + ', '.join(missed) if missed else 'met by all'}")


def scaling_print(by_images: dict, connections: int) -> None:
    """Whether each hot page's figures hold from the fewest images to the most."""
    few, many = min(by_images), max(by_images)
    print(f"\n{many} vs {few} images, {connections} clients (goal: req/s at least {1 - GOAL_SCALING:.2f}x, "
          f"p95 at most {1 + GOAL_SCALING:.2f}x)")
    for name, r in by_images[many].items():
        if name == BASELINE:
            continue
        before = by_images[few][name]
        rate = (r["requests"] / r["seconds"]) / (before["requests"] / before["seconds"])
        p95 = r["p95"] / before["p95"]
        held = rate >= 1 - GOAL_SCALING and p95 <= 1 + GOAL_SCALING
        print(f"{name:>24} req/s {rate:5.2f}x  p95 {p95:5.2f}x  {'held' if held else 'not held'}")


def run_images(count: int, args, maintenance_url: str, bench_url: str, results: dict) -> None:
    """Seed a fresh database with `count` images and run every scenario at each count of clients on it."""
    import psycopg
    from django.core.management import call_command
    from django.db import connections

    connections.close_all()
    database_recreate(maintenance_url)
    call_command("migrate", verbosity=0)
    started = time.monotonic()
    data = seed(count, max(args.connections))
    print(f"\nseeded {count} images (3 predictions, a model mask and 2 candidate masks each) and "
          f"{max(args.connections)} radiologists in {time.monotonic() - started:.0f} s", flush=True)
    data.update(csrf=csrf_secret(), cookies=sessions(data["users"]))
    queries = queries_per_request(scenario_senders(data, random.Random(0)))
    port = free_port()
    # The server as `make demo` and the Docker image run it (config/gunicorn.py), without its access log, and without
    # loading the click refiners as its workers start: no scenario clicks, and importing torch would slow the first.
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.py", "--bind",
                               f"127.0.0.1:{port}", "--workers", str(args.workers), "--access-logfile",
                               "/dev/null", "--log-level", "warning", "config.wsgi"], cwd=ROOT,
                              env={**os.environ, "REFINER_WARM": "0"})
    try:
        server_wait(port, args.workers)
        with psycopg.connect(bench_url, autocommit=True) as monitor:
            cpu_groups = {"app": lambda: process_and_children(server.pid), "db": backend_pids(monitor)}
            for clients in args.connections:
                results[count, clients] = {
                    name: wrk(f"http://127.0.0.1:{port}{path}", script, clients, args.seconds, cpu_groups)
                    for name, (path, script) in scenarios(data).items()}
                table_print(results[count, clients], queries, count, clients, args)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=numbers, default=[10_000], help="counts of images, e.g. 10000,100000")
    parser.add_argument("--connections", type=numbers, default=[20, 50], help="counts of concurrent clients")
    parser.add_argument("--seconds", type=int, default=10, help="per scenario")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="gunicorn's processes (of config/gunicorn.py's threads each)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database (of the last count)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")

    maintenance_url, bench_url = database_urls()
    media = Path(tempfile.mkdtemp(prefix="bench-media-"))
    os.environ.update(DATABASE_URL=bench_url, MEDIA_ROOT=str(media), DJANGO_SETTINGS_MODULE="config.settings",
                      LOG_LEVEL="WARNING", ALLOWED_HOSTS="127.0.0.1,testserver")
    import django

    django.setup()
    results = {}
    try:
        for count in args.images:
            run_images(count, args, maintenance_url, bench_url, results)
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            database_recreate(maintenance_url, drop_only=True)
        shutil.rmtree(media, ignore_errors=True)
    if len(args.images) > 1:
        for clients in args.connections:
            scaling_print({count: results[count, clients] for count in args.images}, clients)


if __name__ == "__main__":
    main()
