from django.urls import path

from annotator.projects import api, views

# Each resource's pages and API side by side.
urlpatterns = [
    path("", views.home, name="home"),
    path("api/projects/", api.ProjectListApi.as_view()),
    path("projects/<int:pk>/", views.project_detail, name="project"),
    path("api/projects/<int:pk>/", api.ProjectDetailApi.as_view()),
    path("api/projects/<int:pk>/images/", api.ImageListApi.as_view()),
    path("api/jobs/<int:pk>/", api.JobDetailApi.as_view()),
    # One image, and the files behind its page
    path("api/images/<int:pk>/", api.ImageDetailApi.as_view()),
    path("api/images/<int:pk>/image", api.ImageFileApi.as_view(), name="image-file"),
    path("api/images/<int:pk>/reference.png", api.ReferenceMaskFileApi.as_view(), name="reference-mask-file"),
    path("api/predictions/<int:pk>/heatmap.png", api.HeatmapFileApi.as_view(), name="heatmap-file"),
    path("api/masks/<int:pk>/mask.png", api.MaskFileApi.as_view(), name="mask-file"),
    path("api/candidate-masks/<int:pk>/mask.png", api.CandidateMaskFileApi.as_view(), name="candidate-mask-file"),
]
