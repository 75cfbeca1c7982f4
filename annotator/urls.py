"""The annotator's pages and API, each feature's in its own folder's urls.py."""
from django.urls import include, path

urlpatterns = [
    path("", include("annotator.projects.urls")),
    path("", include("annotator.ingest.urls")),
    path("", include("annotator.export.urls")),
    path("", include("annotator.finetune.urls")),
]
