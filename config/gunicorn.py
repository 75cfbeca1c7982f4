"""gunicorn's settings, for `make demo` and the Docker image alike; GUNICORN_CMD_ARGS can still override any.

Pages cost CPU, so one process per core; each has a few threads, which overlap the waits on the database, on files
and on the network. The backlog is gunicorn's default (2048): a burst of clients waits in it instead of being dropped
and retried a second later, as Django's development server does with its backlog of 5.
"""
import os
import threading

bind = os.environ.get("WEB_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
threads = int(os.environ.get("WEB_THREADS", 4))
worker_class = "gthread"
timeout = 300  # an upload of up to UPLOAD_MAX_BYTES must have time to arrive
accesslog = "-"


def post_worker_init(worker):
    """Each worker imports its views before its first request (0.3 s here, which that request paid before) and
    loads the click refiners in the background (REFINER_WARM=0: on the first click)."""
    from django.conf import settings
    from django.urls import get_resolver

    get_resolver().url_patterns  # imports every view

    if settings.REFINER_WARM:
        from annotator.masks.refine import refiners_warm

        threading.Thread(target=refiners_warm, name="refiners-warm", daemon=True).start()
