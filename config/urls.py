from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotator import api, training_api, training_views, views
from review import views as review_views

# /healthz and /readyz are not here: annotator.middleware.HealthCheckMiddleware answers them before host checks
# and login.
urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("projects/<int:pk>/", views.project_detail, name="project"),
    path("projects/<int:pk>/upload/", views.project_upload, name="project-upload"),
    path("projects/<int:pk>/dashboard/", views.project_dashboard, name="project-dashboard"),
    path("projects/<int:pk>/export/coco.json", views.export_coco, name="export-coco"),
    path("projects/<int:pk>/export/masks.zip", views.export_png, name="export-png"),
    path("projects/<int:pk>/models/", training_views.project_models, name="project-models"),
    path("projects/<int:pk>/models/finetune/", training_views.finetune_start, name="project-finetune"),
    path("projects/<int:pk>/models/runs/<int:run_pk>/cancel/", training_views.training_run_cancel,
         name="training-run-cancel"),
    path("projects/<int:pk>/models/<int:version_pk>/rollback/", training_views.model_version_rollback,
         name="model-version-rollback"),
    path("projects/<int:pk>/models/default/rollback/", training_views.model_version_rollback,
         name="model-version-default"),
    path("review/", review_views.queue, name="review-queue"),
    path("review/next/", review_views.take_next, name="review-next"),
    path("review/images/<int:pk>/", review_views.image_review, name="review-image"),
    path("review/images/<int:pk>/approve/", review_views.approve, name="review-approve"),
    path("review/images/<int:pk>/reject/", review_views.reject, name="review-reject"),
    path("review/images/<int:pk>/requeue/", review_views.requeue, name="review-requeue"),
    path("review/images/<int:pk>/history/", review_views.image_history, name="review-history"),
    path("review/images/<int:pk>/masks/<int:version>/restore/", review_views.restore, name="review-restore"),
    # API
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/projects/", api.ProjectListApi.as_view()),
    path("api/projects/<int:pk>/", api.ProjectDetailApi.as_view()),
    path("api/projects/<int:pk>/uploads/", api.UploadApi.as_view()),
    path("api/projects/<int:pk>/images/", api.ImageListApi.as_view()),
    path("api/projects/<int:pk>/export/coco/", api.CocoExportApi.as_view()),
    path("api/projects/<int:pk>/export/png/", api.PngExportApi.as_view()),
    path("api/jobs/<int:pk>/", api.JobDetailApi.as_view()),
    path("api/projects/<int:pk>/training-runs/", training_api.TrainingRunListApi.as_view()),
    path("api/training-runs/<int:pk>/", training_api.TrainingRunDetailApi.as_view()),
    path("api/training-runs/<int:pk>/cancel/", training_api.TrainingRunCancelApi.as_view()),
    path("api/projects/<int:pk>/model-versions/", training_api.ModelVersionListApi.as_view()),
    path("api/model-versions/<int:pk>/rollback/", training_api.ModelVersionRollbackApi.as_view()),
    path("api/projects/<int:pk>/model-versions/default/rollback/", training_api.DefaultVersionRollbackApi.as_view()),
    path("api/images/<int:pk>/", api.ImageDetailApi.as_view()),
    path("api/images/<int:pk>/masks/", api.MaskUploadApi.as_view()),
    path("api/images/<int:pk>/masks/<int:version>/restore/", api.MaskRestoreApi.as_view()),
    path("api/images/<int:pk>/approve/", api.ApproveApi.as_view()),
    path("api/images/<int:pk>/reject/", api.RejectApi.as_view()),
    path("api/images/<int:pk>/requeue/", api.RequeueApi.as_view()),
    path("api/review/queue/", api.ReviewQueueApi.as_view()),
    path("api/images/<int:pk>/image", api.ImageFileApi.as_view(), name="image-file"),
    path("api/predictions/<int:pk>/heatmap.png", api.HeatmapFileApi.as_view(), name="heatmap-file"),
    path("api/masks/<int:pk>/mask.png", api.MaskFileApi.as_view(), name="mask-file"),
    path("api/images/<int:pk>/reference.png", api.ReferenceMaskFileApi.as_view(), name="reference-mask-file"),
]
