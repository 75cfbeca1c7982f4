"""The sweep: work the database calls unfinished that no worker is going to do is sent to the workers again. Celery
beat runs it every JOB_SWEEP_SECONDS. That is a queued job (or a queued or running fine-tuning run) whose message no
broker holds any more (Redis restarted without persistence, a web process that died between its commit and the
publish), and a running job whose worker stopped beating (killed outright: Redis keeps its message unacknowledged
until CELERY_VISIBILITY_TIMEOUT, so for a running job the broker's word does not count, only its lease).

The broker and the database are not read in one atomic step, so now and then a job is sent twice (e.g. a worker took
its message from the queue a moment before and has not yet recorded it as unacknowledged). That is harmless:
annotation is idempotent per image, a job is claimed with a conditional update, and a finished job, or one another
worker holds, ignores its message.
"""
import json
import logging
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.utils import timezone

from annotator.annotation.services import job_lease_expired
from annotator.enqueue import JOB_ANNOTATE, TRAINING_RUN, task_send
from annotator.models import Job, TrainingRun

log = logging.getLogger(__name__)


def jobs_sweep() -> list[int]:
    """Send again the annotation jobs older than JOB_SWEEP_GRACE_SECONDS that no worker will do: queued ones that no
    broker message holds, and running ones whose lease expired unless a message waits in the queue for them; their
    ids. A running job whose worker beats is left to it."""
    # The broker first: a row that finishes in between is then read as done, not as unfinished and lost.
    messages = broker_task_args(JOB_ANNOTATE)
    if messages is None:
        return []
    waiting, delivered = messages
    unfinished = _old_enough(Job.objects.filter(status__in=Job.UNFINISHED)).exclude(pk__in=waiting)
    unheld = list(unfinished.filter(status=Job.Status.QUEUED).exclude(pk__in=delivered).values_list("id", flat=True))
    silent = list(unfinished.filter(job_lease_expired(timezone.now())).values_list("id", flat=True))
    _resend(unheld, JOB_ANNOTATE, "no broker message holds jobs %s; sent them again")
    _resend(silent, JOB_ANNOTATE, "the workers of running jobs %s stopped beating; sent them again")
    return sorted(unheld + silent)


def training_runs_sweep() -> list[int]:
    """The same for fine-tuning runs, by the broker's word alone: a run found running again restarts cleanly (see
    finetune/services.py)."""
    messages = broker_task_args(TRAINING_RUN)
    if messages is None:
        return []
    waiting, delivered = messages
    unfinished = _old_enough(TrainingRun.objects.filter(status__in=TrainingRun.UNFINISHED))
    lost = list(unfinished.exclude(pk__in=waiting | delivered).values_list("id", flat=True))
    _resend(lost, TRAINING_RUN, "no broker message holds fine-tuning runs %s; sent them again")
    return lost


def _old_enough(unfinished):
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_SWEEP_GRACE_SECONDS)
    return unfinished.filter(created_at__lt=cutoff).order_by("id")


def _resend(ids: list[int], task_name: str, message: str) -> None:
    for pk in ids:
        task_send(task_name, pk)
    if ids:
        log.warning("sweep: " + message, ids)


def broker_task_args(task_name: str) -> tuple[set, set] | None:
    """The first argument of each message of the task that the broker holds: those waiting in the task's queue, and
    those delivered to a worker and not yet acknowledged; None for a kind of broker this cannot look into."""
    app = current_app
    queue = app.amqp.router.route({}, task_name)["queue"].name
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        driver = connection.transport.driver_type
        if driver == "redis":
            # One MULTI: a message moved from the queue to the unacknowledged hash is seen in one place or the
            # other. Nothing here sets a priority, so all messages are in the queue's own list.
            with channel.conn_or_acquire() as client:
                waiting, unacked = client.pipeline().lrange(queue, 0, -1).hvals(channel.unacked_key).execute()
            waiting, delivered = [json.loads(raw) for raw in waiting], [json.loads(raw)[0] for raw in unacked]
        elif driver == "filesystem":
            # A message is a file until a worker takes it; a delivered one cannot be seen. A running job is judged
            # by its lease; a running fine-tuning run gets one spare message, which finds it busy or done.
            waiting = [payload for path in Path(channel.data_folder_in).glob(f"*.{queue}.msg")
                       if (payload := _message_file_read(path)) is not None]
            delivered = []
        else:
            log.warning("job sweep: cannot look into a %s broker; nothing swept", driver)
            return None

        def first_args(payloads):
            messages = [channel.Message(payload, channel=channel) for payload in payloads]
            return {message.decode()[0][0] for message in messages if message.headers.get("task") == task_name}

        return first_args(waiting), first_args(delivered)


def _message_file_read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None  # a worker took it meanwhile
