"""Page cost benchmark: the CPU each hot page and endpoint spends in the app itself, with no server, network or
load generator sharing the cores.

    .venv/bin/python -m bench.pages [--images 10000] [--requests 300] [--profile "review queue page"]

It seeds its own PostgreSQL database (`annotator_bench_pages`, on the server of DATABASE_URL) as bench.load does (one
project of `--images` annotated images waiting for review, a radiologist with a session and an API token), then sends
each request of bench.load's scenarios `--requests` times, in turns, through Django's whole middleware stack in this
process (the WSGI handler's get_response, as gunicorn calls it; CSRF checked as for a browser), and prints per
scenario the CPU time per request (time.process_time, this process: the app's Python and the database client, not
the database server's own work), its queries, and the ratio to the login page's, measured in the same run. With
--profile, cProfile's busiest functions of that scenario follow. Not a test: the figures depend on the machine.
"""
import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import load

DATABASE = "annotator_bench_pages"


def measure(sends: dict, requests: int) -> dict[str, float]:
    """CPU ms per request of each scenario, sent in turns so that a slow moment of the machine hits all alike."""
    from django.db import connection

    connection.ensure_connection()
    for send in sends.values():  # the first of each pays for imports and caches
        send()
    spent = dict.fromkeys(sends, 0.0)
    for _ in range(requests):
        for name, send in sends.items():
            started = time.process_time()
            send()
            spent[name] += time.process_time() - started
    return {name: seconds * 1000 / requests for name, seconds in spent.items()}


def profile_print(send, requests: int, name: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        send()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
    print(f"\n{name}, {requests} requests under cProfile (which slows them):\n{out.getvalue()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300, help="of each scenario, after one to warm up")
    parser.add_argument("--profile", metavar="SCENARIO", help="also profile this scenario (a name of the table)")
    args = parser.parse_args(argv)

    maintenance_url, bench_url = load.database_urls(DATABASE)
    media = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    os.environ.update(DATABASE_URL=bench_url, MEDIA_ROOT=str(media), DJANGO_SETTINGS_MODULE="config.settings",
                      LOG_LEVEL="WARNING", ALLOWED_HOSTS="testserver")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    load.database_recreate(maintenance_url, database=DATABASE)
    try:
        call_command("migrate", verbosity=0)
        data = load.seed(args.images, 1)
        data.update(csrf=load.csrf_secret(), cookies=load.sessions(data["users"]))
        sends = load.scenario_senders(data, random.Random(0))
        if args.profile and args.profile not in sends:
            sys.exit(f"no scenario {args.profile!r}; there are: {', '.join(sends)}")
        queries = load.queries_per_request(sends)
        cpu = measure(sends, args.requests)
        print(f"{args.images} images, {args.requests} requests of each in turns, in one process (Django's WSGI "
              f"handler, no server), PostgreSQL")
        print(f"{'':>28} {'CPU ms/req':>10} {'queries':>7} {'vs baseline':>11}")
        for name, ms in cpu.items():
            print(f"{name:>28} {ms:10.2f} {queries[name]:7d} {ms / cpu[load.BASELINE]:10.1f}x")
        if args.profile:
            profile_print(sends[args.profile], args.requests, args.profile)
    finally:
        connections.close_all()
        load.database_recreate(maintenance_url, drop_only=True, database=DATABASE)
        shutil.rmtree(media, ignore_errors=True)


if __name__ == "__main__":
    main()
