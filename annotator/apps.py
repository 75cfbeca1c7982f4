from django.apps import AppConfig


class AnnotatorConfig(AppConfig):
    name = "annotator"

    def ready(self):
        # Register the Celery tasks in every process (web, worker, shell, tests), so that annotator.enqueue finds
        # them by name; Celery's own autodiscovery only runs in a worker.
        from annotator import tasks  # noqa: F401
