"""Health endpoints for load balancers and container probes: /healthz (the process answers) and /readyz (it can
work: database, broker, model files). annotator.middleware.HealthCheckMiddleware serves them without a login."""
import json
import logging
import time
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from kombu import Connection

log = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 2  # a probe that hangs is as bad as one that fails


def healthz(request):
    """The process is up; touches nothing else, so a slow database never gets the web container restarted."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 when every check passes, else 503 naming the failed ones. Errors go to the log, not to the
    (anonymous) caller, as they can hold host names and user names."""
    checks, failed = {}, []
    for name, check in READINESS_CHECKS.items():
        started = time.monotonic()
        try:
            check()
            checks[name] = {"ok": True}
        except Exception as error:
            log.warning("readiness check %s failed: %s: %s", name, type(error).__name__, error)
            checks[name] = {"ok": False, "error": type(error).__name__}
            failed.append(name)
        checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    if failed:
        return JsonResponse({"status": "unavailable", "failed": failed, "checks": checks}, status=503)
    return JsonResponse({"status": "ok", "checks": checks})


def database_check():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def broker_check():
    # Straight from the settings rather than the Celery app's cached configuration, one attempt, no retries.
    broker = Connection(settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT_SECONDS,
                        transport_options=getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}))
    with broker:
        broker.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_SECONDS)


def ensemble_check():
    """The folder that ml.save_ensemble writes: manifest.json and one safetensors file per architecture. Read here
    without importing ml, which would load torch into every web process."""
    folder = Path(settings.ENSEMBLE_DIR)
    manifest = json.loads((folder / "manifest.json").read_text())
    missing = [name for name in (f"{arch}.safetensors" for arch in manifest["architectures"])
               if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}")


READINESS_CHECKS = {"database": database_check, "broker": broker_check, "ensemble": ensemble_check}
