"""The sweep: a job (or fine-tuning run) the database calls queued or running, but whose message no broker holds
any more (Redis restarted without persistence, a worker on the filesystem broker killed mid-job, a web process that
died between its commit and the publish), is sent to the workers again. Celery beat runs it every JOB_SWEEP_SECONDS.

The broker and the database are not read in one atomic step, so now and then a job is sent twice (e.g. a worker took
its message from the queue a moment before and has not yet recorded it as unacknowledged). That is harmless:
annotation is idempotent per image and a finished job ignores its message.
"""
import json
import logging
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.utils import timezone

from annotator.enqueue import JOB_ANNOTATE, TRAINING_RUN, task_send
from annotator.models import Job, TrainingRun

log = logging.getLogger(__name__)


def jobs_sweep() -> list[int]:
    """Send again the queued and running annotation jobs older than JOB_SWEEP_GRACE_SECONDS that no broker message
    holds; their ids."""
    return _unheld_resend(Job.objects.filter(status__in=Job.UNFINISHED), JOB_ANNOTATE, "jobs")


def training_runs_sweep() -> list[int]:
    """The same for fine-tuning runs: a run found running again restarts cleanly (see finetune/services.py)."""
    unfinished = TrainingRun.objects.filter(status__in=TrainingRun.UNFINISHED)
    return _unheld_resend(unfinished, TRAINING_RUN, "fine-tuning runs")


def _unheld_resend(unfinished, task_name: str, what: str) -> list[int]:
    # The broker first: a row that finishes in between is then read as done, not as unfinished and lost.
    held = broker_task_args(task_name)
    if held is None:
        return []
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_SWEEP_GRACE_SECONDS)
    lost = [pk for pk in unfinished.filter(created_at__lt=cutoff).order_by("id").values_list("id", flat=True)
            if pk not in held]
    for pk in lost:
        task_send(task_name, pk)
    if lost:
        log.warning("sweep: no broker message holds %s %s; sent them again", what, lost)
    return lost


def broker_task_args(task_name: str) -> set | None:
    """The first argument of each message of the task that the broker holds, waiting in the task's queue or
    delivered to a worker and not yet acknowledged; None for a kind of broker this cannot look into."""
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
            payloads = [json.loads(raw) for raw in waiting] + [json.loads(raw)[0] for raw in unacked]
        elif driver == "filesystem":
            # A message is a file until a worker takes it; a running job's message cannot be seen, so a job that
            # runs longer than the grace period gets one spare message, which finds it done.
            payloads = [payload for path in Path(channel.data_folder_in).glob(f"*.{queue}.msg")
                        if (payload := _message_file_read(path)) is not None]
        else:
            log.warning("job sweep: cannot look into a %s broker; nothing swept", driver)
            return None
        messages = [channel.Message(payload, channel=channel) for payload in payloads]
        return {message.decode()[0][0] for message in messages if message.headers.get("task") == task_name}


def _message_file_read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None  # a worker took it meanwhile
