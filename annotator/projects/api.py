"""The REST API for reading projects, images and jobs, and the files behind an image page; for scripts (token auth)
and the browser (session auth) alike."""
from functools import cached_property

from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.views import APIView

from annotator import access
from annotator.models import CandidateMask, Mask, Prediction
from annotator.pagination import CountedCursorPagination
from annotator.projects import selectors
from annotator.serializers import ImageListSerializer, ImageSerializer, JobSerializer, ProjectSerializer
from annotator.tallies import tallies_count

PNG = OpenApiResponse(OpenApiTypes.BINARY, description="a PNG file")


class ProjectListApi(generics.ListCreateAPIView):
    serializer_class = ProjectSerializer

    def get_queryset(self):
        return selectors.projects_listed(self.request.user)

    def perform_create(self, serializer):
        access.admin_check(self.request.user, "create projects")
        serializer.save()


class ProjectDetailApi(generics.RetrieveAPIView):
    serializer_class = ProjectSerializer

    def get_object(self):
        return access.project_get(self.request.user, self.kwargs["pk"])


class JobDetailApi(generics.RetrieveAPIView):
    serializer_class = JobSerializer

    def get_object(self):
        return access.job_get(self.request.user, self.kwargs["pk"])


class ImageListApi(generics.ListAPIView):
    serializer_class = ImageListSerializer
    pagination_class = CountedCursorPagination

    def get_queryset(self):
        return self.project.images.all()

    def list_count(self):
        return tallies_count([self.project])

    @cached_property
    def project(self):
        return access.project_get(self.request.user, self.kwargs["pk"])


class ImageDetailApi(generics.RetrieveAPIView):
    serializer_class = ImageSerializer

    def get_object(self):
        return selectors.image_detail_get(self.request.user, self.kwargs["pk"])


@extend_schema(responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="the image file (PNG or JPEG)")})
class ImageFileApi(APIView):
    def get(self, request, pk):
        image = access.image_get(request.user, pk)
        kind = "png" if image.file.name.endswith(".png") else "jpeg"
        return FileResponse(image.file.open("rb"), content_type=f"image/{kind}")


class ImagePngApi(APIView):
    """A PNG that belongs to an image, found by its own id; 404 unless the user may see the image."""

    model, file_field = None, ""

    @extend_schema(responses={200: PNG})
    def get(self, request, pk):
        row = get_object_or_404(self.model.objects.filter(image__in=access.images_visible(request.user)), pk=pk)
        return FileResponse(getattr(row, self.file_field).open("rb"), content_type="image/png")


class HeatmapFileApi(ImagePngApi):
    model, file_field = Prediction, "heatmap"


class MaskFileApi(ImagePngApi):
    model, file_field = Mask, "file"


class CandidateMaskFileApi(ImagePngApi):
    model, file_field = CandidateMask, "file"


@extend_schema(responses={200: PNG})
class ReferenceMaskFileApi(APIView):
    """The ground-truth mask imported with the image, if any."""

    def get(self, request, pk):
        image = access.image_get(request.user, pk)
        if not image.reference_mask:
            raise Http404
        return FileResponse(image.reference_mask.open("rb"), content_type="image/png")
