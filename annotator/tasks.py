"""Celery tasks: each takes an id, calls one service and retries with backoff. They are sent by annotator.enqueue,
by name: keep the names, queued messages carry them."""
from celery import shared_task
from django.db import InterfaceError, OperationalError, connection

from annotator import sweep
from annotator.annotation import services as annotation
from annotator.enqueue import training_run_enqueue_later
from annotator.finetune import services as finetune


@shared_task(bind=True, max_retries=3)
def job_annotate_task(self, job_id: int) -> None:
    """Run the ensemble over an upload's images; retried with backoff, marked failed when retries run out."""
    # The task's retry, or a message the broker gave back after its worker died: the lease it finds was its own.
    takeover = self.request.retries > 0 or bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        annotation.job_annotate(job_id, takeover=takeover)
    except annotation.EnsembleMismatch as error:
        annotation.job_fail(job_id, str(error))
    except Exception as error:
        _retry_or_fail(self, error, lambda reason: annotation.job_fail(job_id, reason))


def _retry_or_fail(task, error: Exception, fail) -> None:
    """Retry with backoff; once retries run out, record the failure with `fail(reason)` and raise."""
    if isinstance(error, (OperationalError, InterfaceError)):
        # The database went away and Django's connection with it: drop it, so that recording the failure and the
        # retry connect afresh instead of failing on the dead connection.
        connection.close()
    if task.request.retries >= task.max_retries:
        fail(f"{type(error).__name__}: {error}")
        raise error
    raise task.retry(exc=error, countdown=5 * 2**task.request.retries)


@shared_task
def jobs_sweep_task() -> None:
    """Send again the jobs and fine-tuning runs whose broker message was lost; Celery beat runs it every
    JOB_SWEEP_SECONDS, so the next run is the retry."""
    sweep.jobs_sweep()
    sweep.training_runs_sweep()


@shared_task(bind=True, max_retries=3)
def training_run_task(self, run_id: int) -> None:
    """Fine-tune a project's ensemble; retried with backoff, marked failed when retries run out or cannot help."""
    try:
        finetune.training_run_execute(run_id)
    except finetune.RunBusy:
        # Another worker beats on it; look again once it would count as silent, by then finished or gone.
        training_run_enqueue_later(run_id, finetune.HEARTBEAT_STALE.total_seconds())
    except finetune.TrainingError as error:
        finetune.training_run_fail(run_id, str(error))
    except Exception as error:
        _retry_or_fail(self, error, lambda reason: finetune.training_run_fail(run_id, reason))


@shared_task(bind=True, max_retries=3)
def project_reannotate_task(self, project_id: int) -> None:
    """Annotate a project's pending images again with the version it uses now; idempotent, retried with backoff."""
    try:
        annotation.project_reannotate(project_id)
    except Exception as error:
        raise self.retry(exc=error, countdown=5 * 2**self.request.retries)
