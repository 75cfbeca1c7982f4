"""Every Celery task is sent from here, once the transaction that asks for it has committed.

A task is looked up by its registered name when it is sent, so the services that send tasks need not import
annotator.tasks (which imports them): no import cycle. The names are those in queued messages; keep them.
"""
import logging
from functools import partial

from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError

JOB_ANNOTATE = "annotator.tasks.job_annotate_task"
TRAINING_RUN = "annotator.tasks.training_run_task"
PROJECT_REANNOTATE = "annotator.tasks.project_reannotate_task"
SWEPT = (JOB_ANNOTATE, TRAINING_RUN)  # sent again by annotator/sweep.py while their row is unfinished

log = logging.getLogger(__name__)


def task_send(name: str, object_id: int) -> None:
    """Send the task with the id of what it works on after the current transaction commits (at once outside one)."""
    transaction.on_commit(partial(_send, name, object_id))


def _send(name: str, object_id: int) -> None:
    try:
        current_app.tasks[name].delay(object_id)
    except OperationalError as error:
        if name not in SWEPT:
            raise
        # The work is committed and the request did what it was asked: the sweep sends it once the broker is back.
        log.error("broker unreachable: %s %s not sent (%s); the sweep sends it again", name, object_id, error)


def job_annotate_enqueue(job_id: int) -> None:
    task_send(JOB_ANNOTATE, job_id)


def training_run_enqueue(run_id: int) -> None:
    task_send(TRAINING_RUN, run_id)


def training_run_enqueue_later(run_id: int, seconds: float) -> None:
    """Look at the run again in `seconds`; sent at once, as it waits for no transaction."""
    current_app.tasks[TRAINING_RUN].apply_async(args=[run_id], countdown=seconds)


def project_reannotate_enqueue(project_id: int) -> None:
    task_send(PROJECT_REANNOTATE, project_id)
