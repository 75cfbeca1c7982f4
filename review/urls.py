"""The review pages and API: the queue, one image, its versions and decisions, and a project's dashboard."""
from django.urls import path

from review import api, views
from review.dashboard import views as dashboard_views

# Each resource's pages and API side by side.
urlpatterns = [
    path("review/", views.queue, name="review-queue"),
    path("review/next/", views.take_next, name="review-next"),
    path("api/review/queue/", api.ReviewQueueApi.as_view()),
    # One image: its page and mask versions
    path("review/images/<int:pk>/", views.image_review, name="review-image"),
    path("review/images/<int:pk>/history/", views.image_history, name="review-history"),
    path("api/images/<int:pk>/masks/", api.MaskUploadApi.as_view()),
    path("api/images/<int:pk>/masks/<int:version>/restore/", api.MaskRestoreApi.as_view()),
    path("api/images/<int:pk>/refine/", api.MaskRefineApi.as_view(), name="mask-refine"),
    path("review/images/<int:pk>/masks/<int:version>/restore/", views.restore, name="review-restore"),
    # Decisions on it
    path("review/images/<int:pk>/approve/", views.approve, name="review-approve"),
    path("review/images/<int:pk>/reject/", views.reject, name="review-reject"),
    path("review/images/<int:pk>/requeue/", views.requeue, name="review-requeue"),
    path("api/images/<int:pk>/approve/", api.ApproveApi.as_view()),
    path("api/images/<int:pk>/reject/", api.RejectApi.as_view()),
    path("api/images/<int:pk>/requeue/", api.RequeueApi.as_view()),
    path("projects/<int:pk>/dashboard/", dashboard_views.project_dashboard, name="project-dashboard"),
]
