"""Request bodies and query strings of the review API (validated with these, and documented by them), and its 409
body."""
import json

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.settings import api_settings


class MaskUploadRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="a PNG of the image's size; any non-zero (or non-transparent) pixel is mask")
    parent_version = serializers.IntegerField(required=False, help_text="the version the drawing started from")


class RestoreRequestSerializer(serializers.Serializer):
    parent_version = serializers.IntegerField(required=False, help_text="the latest version the caller has seen")


class DecisionRequestSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True)
    label = serializers.CharField(required=False, allow_blank=True,
                                  help_text="the radiologist's image-level diagnosis, one of the project's classes")


class ApproveRequestSerializer(DecisionRequestSerializer):
    mask = serializers.IntegerField(required=False, help_text="id of the mask version to approve; default the latest")
    mask_version = serializers.IntegerField(required=False, help_text="the latest version the caller has seen: "
                                            "409 if a newer one was saved since, and nothing is approved")


class ReviewQueueQuerySerializer(serializers.Serializer):
    project = serializers.IntegerField(required=False, help_text="only this project's images")


class StaleMaskSerializer(serializers.Serializer):
    detail = serializers.CharField()
    latest_version = serializers.IntegerField(allow_null=True)


class ClickSerializer(serializers.Serializer):
    x = serializers.FloatField(help_text="pixels from the image's left edge")
    y = serializers.FloatField(help_text="pixels from the image's top edge")
    positive = serializers.BooleanField(help_text="true: lesion here; false: not lesion")


@extend_schema_field(OpenApiTypes.STR)
class ClicksField(serializers.ListField):
    """A JSON list of clicks sent as one form field (multipart cannot nest), each error named by its click."""

    child = ClickSerializer()
    default_error_messages = {"invalid_json": "not JSON: {reason}",
                              "too_many": "at most {limit} clicks at a time, got {count}"}

    def get_value(self, dictionary):
        return dictionary.get(self.field_name, empty)

    def to_internal_value(self, data):
        from ml.interactive import MAX_CLICKS  # torch comes with it: only a refine request pays for the import

        try:
            data = json.loads(data) if isinstance(data, str) else data
        except (ValueError, RecursionError) as error:  # RecursionError: brackets nested thousands deep
            self.fail("invalid_json", reason=error)
        if isinstance(data, list) and len(data) > MAX_CLICKS:  # before checking each of a huge list
            self.fail("too_many", limit=MAX_CLICKS, count=len(data))
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as error:
            if not isinstance(error.detail, dict):  # not a list, or empty
                raise
            raise serializers.ValidationError([f"click {index + 1}: {reason}" for index, detail in error.detail.items()
                                               for reason in _reasons(detail)])


def _reasons(detail) -> list[str]:
    """One click's errors: a list where the click itself is wrong (null), else each field's, named."""
    if isinstance(detail, list):
        return [str(message) for message in detail]
    return [str(message) if name == api_settings.NON_FIELD_ERRORS_KEY else f"{name}: {message}"
            for name, messages in detail.items() for message in messages]


class RefineRequestSerializer(serializers.Serializer):
    mask = serializers.FileField(required=False, help_text="the mask drawn so far, a PNG of the image's size; "
                                 "any non-zero (or non-transparent) pixel is mask; none: an empty mask")
    clicks = ClicksField(allow_empty=False, help_text='a JSON list of clicks in image pixels, all since the '
                         'correction began, e.g. [{"x": 120.5, "y": 80, "positive": true}]')
