from django.urls import path

from annotator.export import api, views

urlpatterns = [
    path("projects/<int:pk>/export/coco.json", views.export_coco, name="export-coco"),
    path("api/projects/<int:pk>/export/coco/", api.CocoExportApi.as_view()),
    path("projects/<int:pk>/export/masks.zip", views.export_png, name="export-png"),
    path("api/projects/<int:pk>/export/png/", api.PngExportApi.as_view()),
]
