"""The fine-tuning API, admins only: start and follow training runs, list model versions, roll back.

Outsiders get 404 (they may not learn the project exists), members who are not admins 403.
"""
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator import access
from annotator.finetune import selectors, services
from annotator.models import ModelVersion, TrainingRun

DOING = "fine-tune and choose model versions"


class TrainingRunSerializer(serializers.ModelSerializer):
    base_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.StringRelatedField()

    class Meta:
        model = TrainingRun
        fields = ["id", "project", "trigger", "status", "cancel_requested", "attempt", "progress", "message",
                  "base_version", "result", "images_used", "masks_used", "failure", "created_by", "created_at",
                  "started_at", "heartbeat_at", "finished_at"]


class ModelVersionSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True)
    in_use = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "project", "name", "folder", "parent", "status", "in_use", "decision", "metrics",
                  "compared_metrics", "manifest", "created_at", "promoted_at"]

    def get_in_use(self, version) -> bool:
        return version.project.model_version_id == version.pk


class RollbackResponseSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    model_version = ModelVersionSerializer(allow_null=True, help_text="the version now in use; null: the built-in one")


def _refused(error: services.TrainingError):
    raise ValidationError({"detail": str(error)})


@extend_schema(methods=["POST"], request=None, responses={201: TrainingRunSerializer})
class TrainingRunListApi(generics.ListCreateAPIView):
    """GET the project's runs, newest first; POST to start one (400 while one is queued or running)."""

    serializer_class = TrainingRunSerializer

    def get_queryset(self):
        return selectors.project_training_runs(access.project_for_admin(self.request.user, self.kwargs["pk"], DOING))

    def create(self, request, *args, **kwargs):
        project = access.project_for_admin(request.user, kwargs["pk"], DOING)
        try:
            run = services.training_run_start(project, request.user)
        except services.TrainingError as error:
            _refused(error)
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED)


class TrainingRunDetailApi(generics.RetrieveAPIView):
    serializer_class = TrainingRunSerializer

    def get_object(self):
        run = access.training_run_get(self.request.user, self.kwargs["pk"])
        access.admin_check(self.request.user, DOING)
        return run


@extend_schema(request=None, responses={200: TrainingRunSerializer})
class TrainingRunCancelApi(APIView):
    def post(self, request, pk):
        run = access.training_run_get(request.user, pk)
        access.admin_check(request.user, DOING)
        try:
            run = services.training_run_cancel(run)
        except services.TrainingError as error:
            _refused(error)
        return Response(TrainingRunSerializer(run).data)


class ModelVersionListApi(generics.ListAPIView):
    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        return selectors.project_model_versions(access.project_for_admin(self.request.user, self.kwargs["pk"], DOING))


@extend_schema(request=None, responses={200: RollbackResponseSerializer})
class ModelVersionRollbackApi(APIView):
    """POST to put a promoted version in use again."""

    def post(self, request, pk):
        version = access.model_version_get(request.user, pk)
        access.admin_check(request.user, DOING)
        return _rollback_response(version.project, version, request.user)


@extend_schema(request=None, responses={200: RollbackResponseSerializer})
class DefaultVersionRollbackApi(APIView):
    """POST to put the built-in default ensemble (settings.ENSEMBLE_DIR) in use again."""

    def post(self, request, pk):
        return _rollback_response(access.project_for_admin(request.user, pk, DOING), None, request.user)


def _rollback_response(project, version, user):
    try:
        project = services.model_version_rollback(project, version, user)
    except services.TrainingError as error:
        _refused(error)
    in_use = None
    if project.model_version_id is not None:
        in_use = ModelVersionSerializer(access.model_version_get(user, project.model_version_id)).data
    return Response({"project": project.pk, "model_version": in_use})
