"""The REST API: the same services as the pages, for scripts (token auth) and the browser (session auth)."""
import tempfile

from django.conf import settings
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator import export, ingest, selectors, services
from annotator.models import Mask, Prediction
from annotator.serializers import (ImageListSerializer, ImageSerializer, JobSerializer, MaskSerializer,
                                   ProjectSerializer)
from review import services as review_services


class ProjectListApi(generics.ListCreateAPIView):
    serializer_class = ProjectSerializer

    def get_queryset(self):
        return selectors.projects_visible(self.request.user)

    def perform_create(self, serializer):
        if not self.request.user.is_staff:
            raise PermissionDenied("only admins create projects")
        serializer.save()


class ProjectDetailApi(generics.RetrieveAPIView):
    serializer_class = ProjectSerializer

    def get_object(self):
        return selectors.project_get(self.request.user, self.kwargs["pk"])


class UploadApi(APIView):
    """POST a zip of PNG/JPEG images (field `file`), optionally with labels.csv inside."""

    permission_classes = [IsAdminUser]
    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        project = selectors.project_get(request.user, pk)
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError({"file": ["attach a zip archive as 'file'"]})
        job = upload_to_job(project, upload, request.user)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


def upload_to_job(project, upload, user):
    """Shared by the page and the API: the upload's own problems become a 400, not a stored half."""
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise ValidationError({"file": [f"the upload is {upload.size} bytes; the limit is "
                                         f"{settings.UPLOAD_MAX_BYTES}"]})
    try:
        entries, labels = ingest.zip_entries(upload)
        return ingest.upload_ingest(project, entries, labels, upload.name, user)
    except ingest.UploadError as error:
        raise ValidationError({"file": [f"{upload.name}: {error}"]})


class JobDetailApi(generics.RetrieveAPIView):
    serializer_class = JobSerializer

    def get_object(self):
        return selectors.job_get(self.request.user, self.kwargs["pk"])


class ImageListApi(generics.ListAPIView):
    serializer_class = ImageListSerializer

    def get_queryset(self):
        project = selectors.project_get(self.request.user, self.kwargs["pk"])
        return project.images.order_by("id")


class ImageDetailApi(generics.RetrieveAPIView):
    serializer_class = ImageSerializer

    def get_object(self):
        return selectors.image_get(self.request.user, self.kwargs["pk"])


def _reviewable_image(request, pk):
    image = selectors.image_get(request.user, pk)
    if not selectors.user_can_review(request.user, image.project):
        raise PermissionDenied("you may view this project but not review it")
    return image


class MaskUploadApi(APIView):
    """POST a PNG mask (`file`) of the image's size; `parent_version` guards against overwriting newer work."""

    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError({"file": ["attach the mask as a PNG named 'file'"]})
        parent_version = _parent_version(request)
        try:
            mask = services.mask_upload(image, upload.read(), request.user, parent_version)
        except services.MaskError as error:
            raise ValidationError({"file": [str(error)]})
        except services.StaleMaskError as error:
            return _stale_response(error)
        return Response(MaskSerializer(mask, context={"request": request}).data, status=status.HTTP_201_CREATED)


class MaskRestoreApi(APIView):
    """POST to bring an older version back as the newest; `parent_version` (optional) as for a mask upload."""

    def post(self, request, pk, version):
        image = _reviewable_image(request, pk)
        mask = get_object_or_404(image.masks, version=version)
        parent_version = _parent_version(request)
        try:
            restored = services.mask_restore(image, mask, request.user, parent_version)
        except services.MaskError as error:
            raise ValidationError({"detail": str(error)})
        except services.StaleMaskError as error:
            return _stale_response(error)
        return Response(MaskSerializer(restored, context={"request": request}).data, status=status.HTTP_201_CREATED)


def _parent_version(request) -> int | None:
    parent = request.data.get("parent_version")
    if parent in (None, ""):
        return None
    try:
        return int(parent)
    except (TypeError, ValueError):
        raise ValidationError({"parent_version": ["a version number"]})


def _stale_response(error):
    return Response({"detail": str(error), "latest_version": error.latest_version}, status=status.HTTP_409_CONFLICT)


class ApproveApi(APIView):
    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        mask = None
        if request.data.get("mask"):
            mask = image.masks.filter(pk=request.data["mask"]).first()
            if mask is None:
                raise ValidationError({"mask": "no such mask of this image"})
        return _decision_response(request, review_services.image_approve, image, mask=mask,
                                  label=request.data.get("label") or "")


class RejectApi(APIView):
    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        return _decision_response(request, review_services.image_reject, image, label=request.data.get("label") or "")


class RequeueApi(APIView):
    """POST to send a rejected image back to the review queue."""

    def post(self, request, pk):
        return _decision_response(request, review_services.image_requeue, _reviewable_image(request, pk))


def _decision_response(request, decide, image, **options):
    try:
        image = decide(image, request.user, comment=request.data.get("comment", ""), **options)
    except review_services.ReviewError as error:
        raise ValidationError({"detail": str(error)})
    return Response(ImageSerializer(image, context={"request": request}).data)


class ReviewQueueApi(generics.ListAPIView):
    serializer_class = ImageListSerializer

    def get_queryset(self):
        project = None
        if self.request.query_params.get("project"):
            project = selectors.project_get(self.request.user, self.request.query_params["project"])
        return selectors.review_queue(self.request.user, project)


class CocoExportApi(APIView):
    permission_classes = [IsAdminUser]

    def get(self, request, pk):
        project = selectors.project_get(request.user, pk)
        return Response(export.project_export_coco(project))


class PngExportApi(APIView):
    permission_classes = [IsAdminUser]

    def get(self, request, pk):
        project = selectors.project_get(request.user, pk)
        return png_zip_response(project)


def png_zip_response(project):
    target = tempfile.TemporaryFile()
    export.project_export_png_zip(project, target)
    target.seek(0)
    return FileResponse(target, as_attachment=True, filename=f"{project.name}-masks.zip",
                        content_type="application/zip")


# The files behind an image page, for the browser (session) and for scripts (token) alike.
class ImageFileApi(APIView):
    def get(self, request, pk):
        image = selectors.image_get(request.user, pk)
        kind = "png" if image.file.name.endswith(".png") else "jpeg"
        return FileResponse(image.file.open("rb"), content_type=f"image/{kind}")


class HeatmapFileApi(APIView):
    def get(self, request, pk):
        prediction = get_object_or_404(Prediction, pk=pk)
        _check_visible(request.user, prediction.image_id)
        return FileResponse(prediction.heatmap.open("rb"), content_type="image/png")


class MaskFileApi(APIView):
    def get(self, request, pk):
        mask = get_object_or_404(Mask, pk=pk)
        _check_visible(request.user, mask.image_id)
        return FileResponse(mask.file.open("rb"), content_type="image/png")


def _check_visible(user, image_id):
    if not selectors.images_visible(user).filter(pk=image_id).exists():
        raise Http404
