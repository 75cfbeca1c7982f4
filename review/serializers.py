"""Request bodies and query strings of the review API (validated with these, and documented by them), and its 409
body."""
from rest_framework import serializers


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
