"""The upload API, admins only: a zip of images becomes a job that the ensemble works through."""
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator import access
from annotator.ingest.archive import UploadError
from annotator.ingest.services import upload_receive
from annotator.serializers import JobSerializer
from annotator.validation import request_validated


class UploadRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="a zip of PNG, JPEG or DICOM images, optionally labels.csv and masks/")


@extend_schema(request={"multipart/form-data": UploadRequestSerializer}, responses={201: JobSerializer})
class UploadApi(APIView):
    """POST a zip of PNG, JPEG or DICOM images (field `file`), optionally with labels.csv and masks/ inside."""

    parser_classes = [MultiPartParser, FormParser]

    def post(self, request, pk):
        project = access.project_for_admin(request.user, pk, "upload")
        upload = request_validated(request, UploadRequestSerializer)["file"]
        try:
            job = upload_receive(project, upload, request.user)
        except UploadError as error:  # the upload's own problems are a 400, not a stored half
            raise ValidationError({"file": [str(error)]})
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)
