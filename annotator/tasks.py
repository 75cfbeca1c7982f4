from celery import shared_task

from annotator import services


@shared_task(bind=True, max_retries=3)
def job_annotate_task(self, job_id: int) -> None:
    """Run the ensemble over an upload's images; retried with backoff, marked failed when retries run out."""
    try:
        services.job_annotate(job_id)
    except services.EnsembleMismatch as error:
        services.job_fail(job_id, str(error))
    except Exception as error:
        if self.request.retries >= self.max_retries:
            services.job_fail(job_id, f"{type(error).__name__}: {error}")
            raise
        raise self.retry(exc=error, countdown=5 * 2**self.request.retries)
