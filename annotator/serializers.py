"""The API's representations of projects, jobs, images, predictions and mask versions, shared by every feature."""
from rest_framework import serializers

from annotator.models import Image, Job, Mask, Prediction, Project, Study


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "description", "classes", "healthy_class", "created_at"]

    def validate(self, data):
        classes = data.get("classes")
        if (not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes)
                or len(classes) < 2 or len(set(classes)) != len(classes)):
            raise serializers.ValidationError({"classes": "give at least two distinct classes"})
        if data.get("healthy_class", "normal") not in classes:
            raise serializers.ValidationError({"healthy_class": "must be one of the classes"})
        return data


class JobSerializer(serializers.ModelSerializer):
    total = serializers.IntegerField(read_only=True, help_text="images to annotate")
    progress = serializers.FloatField(read_only=True, help_text="annotated / total, 0..1")

    class Meta:
        model = Job
        fields = ["id", "project", "source_name", "status", "imported", "duplicates", "total", "annotated",
                  "progress", "errors", "failure", "created_at", "started_at", "finished_at"]


class PredictionSerializer(serializers.ModelSerializer):
    heatmap_url = serializers.SerializerMethodField()

    class Meta:
        model = Prediction
        fields = ["id", "architecture", "model_version", "label", "agrees", "probabilities", "std", "entropy",
                  "mutual_information", "cam_class", "heatmap_url"]

    def get_heatmap_url(self, prediction) -> str:
        return self.context["request"].build_absolute_uri(f"/api/predictions/{prediction.pk}/heatmap.png")


class MaskSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    author = serializers.StringRelatedField()
    restored_from = serializers.SlugRelatedField(slug_field="version", read_only=True)

    class Meta:
        model = Mask
        fields = ["id", "version", "parent", "restored_from", "source", "author", "model_version", "pixels",
                  "created_at", "url"]

    def get_url(self, mask) -> str:
        return self.context["request"].build_absolute_uri(f"/api/masks/{mask.pk}/mask.png")


class ImageListSerializer(serializers.ModelSerializer):
    class Meta:
        model = Image
        fields = ["id", "project", "original_name", "width", "height", "label", "predicted_label", "uncertainty",
                  "flagged", "flag_reason", "review_status", "reviewed_label", "annotated_at"]


class StudySerializer(serializers.ModelSerializer):
    """What an image page may show of its study: never the pseudonymous patient key."""

    class Meta:
        model = Study
        fields = ["id", "name", "modality"]


class ImageSerializer(ImageListSerializer):
    predictions = PredictionSerializer(many=True, read_only=True)
    masks = MaskSerializer(many=True, read_only=True)
    reviewed_by = serializers.StringRelatedField()
    study = StudySerializer(read_only=True)
    reference_mask_url = serializers.SerializerMethodField()

    class Meta(ImageListSerializer.Meta):
        fields = ImageListSerializer.Meta.fields + ["sha256", "model_version", "approved_mask", "reviewed_by",
                                                    "reviewed_at", "predictions", "masks", "study", "series_uid",
                                                    "series_description", "instance_number", "reference_mask_url"]

    def get_reference_mask_url(self, image) -> str | None:
        if not image.reference_mask:
            return None
        return self.context["request"].build_absolute_uri(f"/api/images/{image.pk}/reference.png")
