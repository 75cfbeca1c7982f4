"""The annotator's pages and API: projects, uploads, exports, fine-tuning, and the files behind an image page."""
from django.urls import path

from annotator.export import api as export_api
from annotator.export import views as export_views
from annotator.finetune import api as finetune_api
from annotator.finetune import views as finetune_views
from annotator.ingest import api as ingest_api
from annotator.ingest import views as ingest_views
from annotator.projects import api as projects_api
from annotator.projects import views as projects_views

urlpatterns = [
    path("", projects_views.home, name="home"),
    path("projects/<int:pk>/", projects_views.project_detail, name="project"),
    path("projects/<int:pk>/upload/", ingest_views.project_upload, name="project-upload"),
    path("projects/<int:pk>/export/coco.json", export_views.export_coco, name="export-coco"),
    path("projects/<int:pk>/export/masks.zip", export_views.export_png, name="export-png"),
    path("projects/<int:pk>/models/", finetune_views.project_models, name="project-models"),
    path("projects/<int:pk>/models/finetune/", finetune_views.finetune_start, name="project-finetune"),
    path("projects/<int:pk>/models/runs/<int:run_pk>/cancel/", finetune_views.training_run_cancel,
         name="training-run-cancel"),
    path("projects/<int:pk>/models/<int:version_pk>/rollback/", finetune_views.model_version_rollback,
         name="model-version-rollback"),
    path("projects/<int:pk>/models/default/rollback/", finetune_views.model_version_rollback,
         name="model-version-default"),
    # API
    path("api/projects/", projects_api.ProjectListApi.as_view()),
    path("api/projects/<int:pk>/", projects_api.ProjectDetailApi.as_view()),
    path("api/projects/<int:pk>/uploads/", ingest_api.UploadApi.as_view()),
    path("api/projects/<int:pk>/images/", projects_api.ImageListApi.as_view()),
    path("api/projects/<int:pk>/export/coco/", export_api.CocoExportApi.as_view()),
    path("api/projects/<int:pk>/export/png/", export_api.PngExportApi.as_view()),
    path("api/jobs/<int:pk>/", projects_api.JobDetailApi.as_view()),
    path("api/projects/<int:pk>/training-runs/", finetune_api.TrainingRunListApi.as_view()),
    path("api/training-runs/<int:pk>/", finetune_api.TrainingRunDetailApi.as_view()),
    path("api/training-runs/<int:pk>/cancel/", finetune_api.TrainingRunCancelApi.as_view()),
    path("api/projects/<int:pk>/model-versions/", finetune_api.ModelVersionListApi.as_view()),
    path("api/model-versions/<int:pk>/rollback/", finetune_api.ModelVersionRollbackApi.as_view()),
    path("api/projects/<int:pk>/model-versions/default/rollback/", finetune_api.DefaultVersionRollbackApi.as_view()),
    path("api/images/<int:pk>/", projects_api.ImageDetailApi.as_view()),
    path("api/images/<int:pk>/image", projects_api.ImageFileApi.as_view(), name="image-file"),
    path("api/predictions/<int:pk>/heatmap.png", projects_api.HeatmapFileApi.as_view(), name="heatmap-file"),
    path("api/masks/<int:pk>/mask.png", projects_api.MaskFileApi.as_view(), name="mask-file"),
    path("api/images/<int:pk>/reference.png", projects_api.ReferenceMaskFileApi.as_view(), name="reference-mask-file"),
]
