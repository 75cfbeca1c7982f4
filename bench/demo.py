"""The demo's server under load: what `make demo` serves with now (gunicorn, as config/gunicorn.py sets it up) against
what it served with before (Django's development server), on the demo data, with 20 concurrent clients.

    .venv/bin/python -m bench.demo [--connections 20] [--seconds 10]

It sets the demo up as `make demo` does, in a temporary VAR_DIR (its own SQLite database, folder broker and media):
migrate, demo_setup, and one Celery worker that annotates the 36 demo images with the demo ensemble and is then
stopped. Each server in turn is started on a free loopback port and driven with wrk (Debian's `wrk`) for `--seconds`
per scenario, as the demo radiologist: the login page (anonymous), the review queue page and random image pages;
each both over keep-alive connections (a browser) and with a new connection per request (`Connection: close`, as
many scripts and proxies do). Beside req/s, p50/p95/p99 and the server's CPU ms per request (its processes, from
/proc) it gives the kernel's count of connections dropped because a listening socket's accept queue was full
(TcpExt ListenOverflows in /proc/net/netstat, over the run): the client's TCP sends its SYN again after one second,
which is where the development server's one-second tail comes from (its backlog is socketserver's 5). Then, for
gunicorn with the click refiners loaded as each worker starts (REFINER_WARM=1, the default) and on the first click
(REFINER_WARM=0), it starts the server afresh, waits `--start-wait` seconds (a radiologist opening an image), and
times the first refinements one after another (two per worker, so that every worker answers its first). Not a
test: the figures depend on the machine.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import Request, urlopen

from bench.cpu import process_and_children
from bench.load import LUA, free_port, server_wait, sessions, wrk

ROOT = Path(__file__).resolve().parent.parent
# Each server's command on a port, and its processes (config/gunicorn.py: one per core).
SERVERS = {
    "gunicorn (make demo)": (lambda port: [sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.py",
                                          "--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null",
                                          "config.wsgi"], os.cpu_count() or 1),
    "runserver (before)": (lambda port: [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}",
                                        "--noreload"], 1),
}


def listen_overflows() -> int:
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenOverflows")])


def demo_setup(env: dict) -> None:
    """migrate, demo_setup, and a worker until every demo image is annotated."""
    for command in (["migrate", "--noinput"], ["demo_setup"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
                               "--loglevel=WARNING", "--without-mingle", "--without-gossip"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from annotator.models import Image

    try:
        deadline = time.monotonic() + 900
        while Image.objects.filter(annotated_at__isnull=True).exists():
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit("the worker did not annotate the demo images")
            time.sleep(2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def server_start(command: list[str], env: dict, port: int, processes: int) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    server_wait(port, processes)
    return server


def scenario_lua(cookie: str, image_ids: list[int], fresh: bool) -> dict[str, str]:
    close = ', Connection = "close"' if fresh else ""
    images = "images = {" + ", ".join(map(str, image_ids)) + "}"
    get = 'request = function()\n  return wrk.format("GET", {path}, {{Cookie = "{cookie}"{close}}})\nend'
    return {
        "login page": get.format(path='"/accounts/login/"', cookie="", close=close),
        "review queue page": get.format(path='"/review/"', cookie=cookie, close=close),
        "image page": images + "\n" + get.format(path='"/review/images/" .. images[math.random(#images)] .. "/"',
                                                  cookie=cookie, close=close),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--start-wait", type=float, default=10,
                        help="seconds from a server's start to its first measurement (gunicorn's workers load the "
                             "click refiners meanwhile)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    var = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL"):  # the embedded default, as `make demo` runs
        os.environ.pop(key, None)
    os.environ.update(VAR_DIR=str(var), LOG_LEVEL="WARNING", DJANGO_SETTINGS_MODULE="config.settings")
    env = dict(os.environ)
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from annotator.models import Image

    try:
        started = time.monotonic()
        demo_setup(env)
        print(f"demo set up and annotated in {time.monotonic() - started:.0f} s")
        cookie = sessions([get_user_model().objects.get(username="radiologist")])[0]
        image_ids = list(Image.objects.values_list("id", flat=True))
        results = {}
        for server_name, (command, processes) in SERVERS.items():
            port = free_port()
            server = server_start(command(port), env, port, processes)
            try:
                time.sleep(args.start_wait)
                for fresh in (False, True):
                    for name, script in scenario_lua(cookie, image_ids, fresh).items():
                        before = listen_overflows()
                        result = wrk(f"http://127.0.0.1:{port}/", LUA.format(reviewers="", script=script),
                                     args.connections, args.seconds,
                                     {"app": lambda: process_and_children(server.pid)})
                        result["overflows"] = listen_overflows() - before
                        results[server_name, "new connection each" if fresh else "keep-alive", name] = result
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(30)
        clicks = {warm: first_clicks(env, warm, args.start_wait) for warm in (True, False)}
    finally:
        shutil.rmtree(var, ignore_errors=True)
    table_print(results, args)
    clicks_print(clicks, args)


def first_clicks(env: dict, warm: bool, wait: float) -> list[float]:
    """ms of each of the first refinements (one click on a demo image) after gunicorn starts and `wait` s pass."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from annotator.models import Image

    token, _ = Token.objects.get_or_create(user=get_user_model().objects.get(username="radiologist"))
    image = Image.objects.order_by("pk").first()
    body = urlencode({"clicks": json.dumps([{"x": image.width // 2, "y": image.height // 2, "positive": True}])})
    command, processes = SERVERS["gunicorn (make demo)"]
    port = free_port()
    server = server_start(command(port), {**env, "REFINER_WARM": "1" if warm else "0"}, port, processes)
    try:
        time.sleep(wait)
        times = []
        for _ in range(2 * processes):
            request = Request(f"http://127.0.0.1:{port}/api/images/{image.pk}/refine/", data=body.encode(),
                              headers={"Authorization": f"Token {token.key}",
                                       "Content-Type": "application/x-www-form-urlencoded"})
            started = time.perf_counter()
            with urlopen(request, timeout=120) as response:
                response.read()
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def table_print(results: dict, args) -> None:
    print(f"\nthe demo (36 BUSI images, SQLite), {args.connections} concurrent clients (wrk), {args.seconds} s each; "
          f"{os.cpu_count()} CPU cores shared by server and wrk")
    print(f"{'':>22} {'connections':>19} {'':>18} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'dropped SYNs':>12} {'CPU ms/req':>10}")
    for (server, connections, name), result in results.items():
        rate = result["requests"] / result["seconds"]
        print(f"{server:>22} {connections:>19} {name:>18} {rate:7.1f} {result['p50']:7.0f} {result['p95']:7.0f} "
              f"{result['p99']:7.0f} {result['errors']:6d} {result['overflows']:12d} {result['app ms']:10.1f}")


def clicks_print(clicks: dict, args) -> None:
    print(f"\nthe first refinements after gunicorn (make demo) starts, {args.start_wait:g} s after the start, "
          f"one after another")
    for warm, times in clicks.items():
        label = "refiners loaded at start (REFINER_WARM=1)" if warm else "on the first click (REFINER_WARM=0)"
        print(f"  {label:>42}: " + "  ".join(f"{ms:6.0f} ms" for ms in times))


if __name__ == "__main__":
    main()

