"""The export API, admins only: COCO JSON and the dataset zip, with the options as query parameters."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.views import APIView

from annotator import access
from annotator.export.options import MASK_VALUES, SEGMENTATIONS, STATUSES, ExportOptionsError, export_options_parse
from annotator.export.responses import coco_response, dataset_zip_response


class ExportNegotiation(DefaultContentNegotiation):
    """On an export `?format=` is the COCO segmentation (rle, polygon), not DRF's choice of renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema(parameters=[
    OpenApiParameter("status", enum=list(STATUSES), description="which images (default approved)"),
    OpenApiParameter("label", description="only images with this image-level label"),
    OpenApiParameter("reviewed_from", OpenApiTypes.DATE), OpenApiParameter("reviewed_to", OpenApiTypes.DATE),
    OpenApiParameter("format", enum=list(SEGMENTATIONS), description="COCO segmentation (default rle)"),
    OpenApiParameter("values", enum=list(MASK_VALUES), description="PNG mask values (default binary)"),
])
class ExportApi(APIView):
    """Admins only; the options are query parameters (see export.options.export_options_parse)."""

    content_negotiation_class = ExportNegotiation

    def export(self, request, pk, respond):
        project = access.project_for_admin(request.user, pk, "export")
        try:
            options = export_options_parse(request.query_params, project)
        except ExportOptionsError as error:
            raise ValidationError(error.errors)
        return respond(project, options)


class CocoExportApi(ExportApi):
    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request, pk):
        return self.export(request, pk, coco_response)


class PngExportApi(ExportApi):
    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request, pk):
        return self.export(request, pk, dataset_zip_response)
