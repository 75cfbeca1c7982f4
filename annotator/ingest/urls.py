from django.urls import path

from annotator.ingest import api, views

urlpatterns = [
    path("projects/<int:pk>/upload/", views.project_upload, name="project-upload"),
    path("api/projects/<int:pk>/uploads/", api.UploadApi.as_view()),
]
