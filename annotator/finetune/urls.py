from django.urls import path

from annotator.finetune import api, views

# Each resource's pages and API side by side.
urlpatterns = [
    # The Models page: a project's model versions and its runs
    path("projects/<int:pk>/models/", views.project_models, name="project-models"),
    path("api/projects/<int:pk>/model-versions/", api.ModelVersionListApi.as_view()),
    path("api/projects/<int:pk>/training-runs/", api.TrainingRunListApi.as_view()),
    # Runs: start, follow, cancel
    path("projects/<int:pk>/models/finetune/", views.finetune_start, name="project-finetune"),
    path("api/training-runs/<int:pk>/", api.TrainingRunDetailApi.as_view()),
    path("projects/<int:pk>/models/runs/<int:run_pk>/cancel/", views.training_run_cancel, name="training-run-cancel"),
    path("api/training-runs/<int:pk>/cancel/", api.TrainingRunCancelApi.as_view()),
    # Putting a version in use again
    path("projects/<int:pk>/models/<int:version_pk>/rollback/", views.model_version_rollback,
         name="model-version-rollback"),
    path("api/model-versions/<int:pk>/rollback/", api.ModelVersionRollbackApi.as_view()),
    path("projects/<int:pk>/models/default/rollback/", views.model_version_rollback, name="model-version-default"),
    path("api/projects/<int:pk>/model-versions/default/rollback/", api.DefaultVersionRollbackApi.as_view()),
]
