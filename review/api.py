"""The review API: save and restore mask versions, refine a mask with clicks, approve, reject or requeue an image,
and read the queue. Only admins and the project's radiologists may change anything; viewers get 403, outsiders 404."""
from functools import cached_property

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator import access
from annotator.masks.refine import GRABCUT, LEARNED, ClicksError, image_mask_refine
from annotator.masks.services import StaleMaskError, mask_restore, mask_upload
from annotator.pagination import CountedPagination
from annotator.png import MaskError
from annotator.serializers import ImageListSerializer, ImageSerializer, MaskSerializer
from annotator.validation import query_validated, request_validated
from review import selectors, services
from review.serializers import (ApproveRequestSerializer, DecisionRequestSerializer, MaskUploadRequestSerializer,
                                RefineRequestSerializer, RestoreRequestSerializer, ReviewQueueQuerySerializer,
                                StaleMaskSerializer)

STALE = OpenApiResponse(StaleMaskSerializer, description="a newer version was saved since `parent_version`")
REFINED_PNG = OpenApiResponse(OpenApiTypes.BINARY, description="the refined mask: a PNG of 0 and 255, the image's size")
REFINER_HEADER = OpenApiParameter("X-Refiner", location=OpenApiParameter.HEADER, response=[200],
                                  enum=[LEARNED, GRABCUT],
                                  description="which refiner answered: the checkpoint's learned one, or GrabCut")


def _stale_response(error: StaleMaskError) -> Response:
    return Response({"detail": str(error), "latest_version": error.latest_version}, status=status.HTTP_409_CONFLICT)


@extend_schema(request={"multipart/form-data": MaskUploadRequestSerializer},
               responses={201: MaskSerializer, 409: STALE})
class MaskUploadApi(APIView):
    """POST a PNG mask (`file`) of the image's size; `parent_version` guards against overwriting newer work."""

    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        image = access.image_for_review(request.user, pk)
        data = request_validated(request, MaskUploadRequestSerializer)
        try:
            mask = mask_upload(image, data["file"].read(), request.user, data.get("parent_version"))
        except MaskError as error:
            raise ValidationError({"file": [str(error)]})
        except StaleMaskError as error:
            return _stale_response(error)
        return Response(MaskSerializer(mask, context={"request": request}).data, status=status.HTTP_201_CREATED)


@extend_schema(request={"multipart/form-data": RefineRequestSerializer}, responses={(200, "image/png"): REFINED_PNG},
               parameters=[REFINER_HEADER])
class MaskRefineApi(APIView):
    """POST the mask drawn so far (`mask`, optional: none is an empty mask) and every click of the correction so far
    (`clicks`): the mask redrawn around them. Nothing is stored; a save is a mask upload as for any drawing."""

    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        image = access.image_for_review(request.user, pk)
        data = request_validated(request, RefineRequestSerializer)
        mask = data.get("mask")
        try:
            refined = image_mask_refine(image, mask.read() if mask else None, data["clicks"])
        except MaskError as error:
            raise ValidationError({"mask": [str(error)]})
        except ClicksError as error:
            raise ValidationError({"clicks": [str(error)]})
        return HttpResponse(refined.png, content_type="image/png", headers={"X-Refiner": refined.refiner})


@extend_schema(request=RestoreRequestSerializer, responses={201: MaskSerializer, 409: STALE})
class MaskRestoreApi(APIView):
    """POST to bring an older version back as the newest; `parent_version` (optional) as for a mask upload."""

    def post(self, request, pk, version):
        image = access.image_for_review(request.user, pk)
        mask = get_object_or_404(image.masks, version=version)
        parent_version = request_validated(request, RestoreRequestSerializer).get("parent_version")
        try:
            restored = mask_restore(image, mask, request.user, parent_version)
        except MaskError as error:
            raise ValidationError({"detail": str(error)})
        except StaleMaskError as error:
            return _stale_response(error)
        return Response(MaskSerializer(restored, context={"request": request}).data, status=status.HTTP_201_CREATED)


@extend_schema(request=ApproveRequestSerializer, responses={200: ImageSerializer, 409: STALE})
class ApproveApi(APIView):
    def post(self, request, pk):
        image = access.image_for_review(request.user, pk)
        data = request_validated(request, ApproveRequestSerializer)
        mask = None
        if data.get("mask"):
            mask = image.masks.filter(pk=data["mask"]).first()
            if mask is None:
                raise ValidationError({"mask": "no such mask of this image"})
        try:
            return _decision_response(request, services.image_approve, image, data, mask=mask,
                                      label=data.get("label", ""), seen_version=data.get("mask_version"))
        except StaleMaskError as error:
            return _stale_response(error)


@extend_schema(request=DecisionRequestSerializer, responses={200: ImageSerializer})
class RejectApi(APIView):
    def post(self, request, pk):
        image = access.image_for_review(request.user, pk)
        data = request_validated(request, DecisionRequestSerializer)
        return _decision_response(request, services.image_reject, image, data, label=data.get("label", ""))


@extend_schema(request=DecisionRequestSerializer, responses={200: ImageSerializer})
class RequeueApi(APIView):
    """POST to send a rejected image back to the review queue."""

    def post(self, request, pk):
        image = access.image_for_review(request.user, pk)
        return _decision_response(request, services.image_requeue, image,
                                  request_validated(request, DecisionRequestSerializer))


def _decision_response(request, decide, image, data, **options):
    try:
        image = decide(image, request.user, comment=data.get("comment", ""), **options)
    except services.ReviewError as error:
        raise ValidationError({"detail": str(error)})
    return Response(ImageSerializer(image, context={"request": request}).data)


@extend_schema(parameters=[ReviewQueueQuerySerializer])
class ReviewQueueApi(generics.ListAPIView):
    serializer_class = ImageListSerializer
    pagination_class = CountedPagination

    def get_queryset(self):
        return selectors.review_queue(self.request.user, self.project)

    def list_count(self):
        return selectors.review_queue_count(self.request.user, self.project)

    @cached_property
    def project(self):
        project_id = query_validated(self.request, ReviewQueueQuerySerializer).get("project")
        return access.project_get(self.request.user, project_id) if project_id is not None else None
