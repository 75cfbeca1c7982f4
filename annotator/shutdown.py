"""Whether this worker was asked to stop (SIGTERM, SIGINT: Celery's warm shutdown). Celery waits for the task in hand,
and a job's loop over its images would keep it for as long as the job lasts; the loop checks this between batches and
hands the rest of its work back instead (annotator/annotation/services.py).
"""
from multiprocessing import RawValue

from celery.signals import worker_shutting_down

# In shared memory, made when a worker imports its tasks, before it forks its pool: Celery tells only the main
# process, and a prefork pool's children, which run the tasks, read it too.
_stopping = RawValue("b", 0)


class WorkerStopping(Exception):
    """Raised between batches once the worker is stopping; the work is left for another worker to finish."""


@worker_shutting_down.connect
def _worker_shutting_down(**kwargs) -> None:
    _stopping.value = 1


def worker_stopping() -> bool:
    return bool(_stopping.value)
