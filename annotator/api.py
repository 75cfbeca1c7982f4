"""The REST API: the same services as the pages, for scripts (token auth) and the browser (session auth)."""
import tempfile

from django.conf import settings
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator import export, ingest, selectors, services
from annotator.models import Mask, Prediction
from annotator.serializers import (ApproveRequestSerializer, DecisionRequestSerializer, ImageListSerializer,
                                   ImageSerializer, JobSerializer, MaskSerializer, MaskUploadRequestSerializer,
                                   ProjectSerializer, RestoreRequestSerializer, StaleMaskSerializer,
                                   UploadRequestSerializer)
from review import services as review_services

PNG = OpenApiResponse(OpenApiTypes.BINARY, description="a PNG file")
STALE = OpenApiResponse(StaleMaskSerializer, description="a newer version was saved since `parent_version`")


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


@extend_schema(request={"multipart/form-data": UploadRequestSerializer}, responses={201: JobSerializer})
class UploadApi(APIView):
    """POST a zip of PNG, JPEG or DICOM images (field `file`), optionally with labels.csv and masks/ inside."""

    permission_classes = [IsAdminUser]
    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        project = selectors.project_get(request.user, pk)
        upload = _validated(request, UploadRequestSerializer)["file"]
        job = upload_to_job(project, upload, request.user)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


def upload_to_job(project, upload, user):
    """Shared by the page and the API: the upload's own problems become a 400, not a stored half."""
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise ValidationError({"file": [f"the upload is {upload.size} bytes; the limit is "
                                         f"{settings.UPLOAD_MAX_BYTES}"]})
    try:
        return ingest.upload_ingest(project, ingest.zip_entries(upload), upload.name, user)
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
        return selectors.image_detail_get(self.request.user, self.kwargs["pk"])


def _reviewable_image(request, pk):
    image = selectors.image_get(request.user, pk)
    if not selectors.user_can_review(request.user, image.project):
        raise PermissionDenied("you may view this project but not review it")
    return image


@extend_schema(request={"multipart/form-data": MaskUploadRequestSerializer},
               responses={201: MaskSerializer, 409: STALE})
class MaskUploadApi(APIView):
    """POST a PNG mask (`file`) of the image's size; `parent_version` guards against overwriting newer work."""

    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        data = _validated(request, MaskUploadRequestSerializer)
        try:
            mask = services.mask_upload(image, data["file"].read(), request.user, data.get("parent_version"))
        except services.MaskError as error:
            raise ValidationError({"file": [str(error)]})
        except services.StaleMaskError as error:
            return _stale_response(error)
        return Response(MaskSerializer(mask, context={"request": request}).data, status=status.HTTP_201_CREATED)


@extend_schema(request=RestoreRequestSerializer, responses={201: MaskSerializer, 409: STALE})
class MaskRestoreApi(APIView):
    """POST to bring an older version back as the newest; `parent_version` (optional) as for a mask upload."""

    def post(self, request, pk, version):
        image = _reviewable_image(request, pk)
        mask = get_object_or_404(image.masks, version=version)
        parent_version = _validated(request, RestoreRequestSerializer).get("parent_version")
        try:
            restored = services.mask_restore(image, mask, request.user, parent_version)
        except services.MaskError as error:
            raise ValidationError({"detail": str(error)})
        except services.StaleMaskError as error:
            return _stale_response(error)
        return Response(MaskSerializer(restored, context={"request": request}).data, status=status.HTTP_201_CREATED)


def _validated(request, serializer_class) -> dict:
    """The request body checked against its serializer: anything else is a 400 naming the field."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _stale_response(error):
    return Response({"detail": str(error), "latest_version": error.latest_version}, status=status.HTTP_409_CONFLICT)


@extend_schema(request=ApproveRequestSerializer, responses={200: ImageSerializer, 409: STALE})
class ApproveApi(APIView):
    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        data = _validated(request, ApproveRequestSerializer)
        mask = None
        if data.get("mask"):
            mask = image.masks.filter(pk=data["mask"]).first()
            if mask is None:
                raise ValidationError({"mask": "no such mask of this image"})
        try:
            return _decision_response(request, review_services.image_approve, image, data, mask=mask,
                                      label=data.get("label", ""), seen_version=data.get("mask_version"))
        except services.StaleMaskError as error:
            return _stale_response(error)


@extend_schema(request=DecisionRequestSerializer, responses={200: ImageSerializer})
class RejectApi(APIView):
    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        data = _validated(request, DecisionRequestSerializer)
        return _decision_response(request, review_services.image_reject, image, data, label=data.get("label", ""))


@extend_schema(request=DecisionRequestSerializer, responses={200: ImageSerializer})
class RequeueApi(APIView):
    """POST to send a rejected image back to the review queue."""

    def post(self, request, pk):
        image = _reviewable_image(request, pk)
        return _decision_response(request, review_services.image_requeue, image,
                                  _validated(request, DecisionRequestSerializer))


def _decision_response(request, decide, image, data, **options):
    try:
        image = decide(image, request.user, comment=data.get("comment", ""), **options)
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


class ExportNegotiation(DefaultContentNegotiation):
    """On an export `?format=` is the COCO segmentation (rle, polygon), not DRF's choice of renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema(parameters=[
    OpenApiParameter("status", enum=list(export.STATUSES), description="which images (default approved)"),
    OpenApiParameter("label", description="only images with this image-level label"),
    OpenApiParameter("reviewed_from", OpenApiTypes.DATE), OpenApiParameter("reviewed_to", OpenApiTypes.DATE),
    OpenApiParameter("format", enum=list(export.SEGMENTATIONS), description="COCO segmentation (default rle)"),
    OpenApiParameter("values", enum=list(export.MASK_VALUES), description="PNG mask values (default binary)"),
])
class ExportApi(APIView):
    """Admins only; the options are query parameters (see export.export_options_parse)."""

    permission_classes = [IsAdminUser]
    content_negotiation_class = ExportNegotiation

    def export_options(self, request, project):
        try:
            return export.export_options_parse(request.query_params, project)
        except export.ExportOptionsError as error:
            raise ValidationError(error.errors)


class CocoExportApi(ExportApi):
    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request, pk):
        project = selectors.project_get(request.user, pk)
        return coco_response(project, self.export_options(request, project))


class PngExportApi(ExportApi):
    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request, pk):
        project = selectors.project_get(request.user, pk)
        return dataset_zip_response(project, self.export_options(request, project))


def coco_response(project, options):
    return _export_response(export.coco_export_write, project, options, "coco.json", "application/json")


def dataset_zip_response(project, options):
    return _export_response(export.dataset_zip_write, project, options, "dataset.zip", "application/zip")


def _export_response(write, project, options, suffix, content_type):
    """Written to a temporary file first and streamed from there, so no export is ever held in memory."""
    target = tempfile.TemporaryFile()
    try:
        write(project, options, target)
    except BaseException:
        target.close()
        raise
    target.seek(0)
    return FileResponse(target, as_attachment=True, filename=f"{project.name}-{options.status}-{suffix}",
                        content_type=content_type)


# The files behind an image page, for the browser (session) and for scripts (token) alike.
@extend_schema(responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="the image file (PNG or JPEG)")})
class ImageFileApi(APIView):
    def get(self, request, pk):
        image = selectors.image_get(request.user, pk)
        kind = "png" if image.file.name.endswith(".png") else "jpeg"
        return FileResponse(image.file.open("rb"), content_type=f"image/{kind}")


@extend_schema(responses={200: PNG})
class HeatmapFileApi(APIView):
    def get(self, request, pk):
        prediction = get_object_or_404(Prediction, pk=pk)
        _check_visible(request.user, prediction.image_id)
        return FileResponse(prediction.heatmap.open("rb"), content_type="image/png")


@extend_schema(responses={200: PNG})
class MaskFileApi(APIView):
    def get(self, request, pk):
        mask = get_object_or_404(Mask, pk=pk)
        _check_visible(request.user, mask.image_id)
        return FileResponse(mask.file.open("rb"), content_type="image/png")


@extend_schema(responses={200: PNG})
class ReferenceMaskFileApi(APIView):
    """The ground-truth mask imported with the image, if any."""

    def get(self, request, pk):
        image = selectors.image_get(request.user, pk)
        if not image.reference_mask:
            raise Http404
        return FileResponse(image.reference_mask.open("rb"), content_type="image/png")


def _check_visible(user, image_id):
    if not selectors.images_visible(user).filter(pk=image_id).exists():
        raise Http404
