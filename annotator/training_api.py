"""The fine-tuning API, admins only: start and follow training runs, list model versions, roll back.

Outsiders get 404 (they may not learn the project exists), members who are not admins 403.
"""
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator import selectors, training
from annotator import training_selectors
from annotator.models import ModelVersion, TrainingRun


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


def _admin_only(user):
    if not user.is_staff:
        raise PermissionDenied("only admins fine-tune and choose model versions")


def _admin_project(request, pk):
    project = selectors.project_get(request.user, pk)
    _admin_only(request.user)
    return project


def _refused(error: training.TrainingError):
    raise ValidationError({"detail": str(error)})


@extend_schema(methods=["POST"], request=None, responses={201: TrainingRunSerializer})
class TrainingRunListApi(generics.ListCreateAPIView):
    """GET the project's runs, newest first; POST to start one (400 while one is queued or running)."""

    serializer_class = TrainingRunSerializer

    def get_queryset(self):
        return training_selectors.project_training_runs(_admin_project(self.request, self.kwargs["pk"]))

    def create(self, request, *args, **kwargs):
        project = _admin_project(request, kwargs["pk"])
        try:
            run = training.training_run_start(project, request.user)
        except training.TrainingError as error:
            _refused(error)
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED)


class TrainingRunDetailApi(generics.RetrieveAPIView):
    serializer_class = TrainingRunSerializer

    def get_object(self):
        run = training_selectors.training_run_get(self.request.user, self.kwargs["pk"])
        _admin_only(self.request.user)
        return run


@extend_schema(request=None, responses={200: TrainingRunSerializer})
class TrainingRunCancelApi(APIView):
    def post(self, request, pk):
        run = training_selectors.training_run_get(request.user, pk)
        _admin_only(request.user)
        try:
            run = training.training_run_cancel(run)
        except training.TrainingError as error:
            _refused(error)
        return Response(TrainingRunSerializer(run).data)


class ModelVersionListApi(generics.ListAPIView):
    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        return training_selectors.project_model_versions(_admin_project(self.request, self.kwargs["pk"]))


@extend_schema(request=None, responses={200: RollbackResponseSerializer})
class ModelVersionRollbackApi(APIView):
    """POST to put a promoted version in use again."""

    def post(self, request, pk):
        version = training_selectors.model_version_get(request.user, pk)
        _admin_only(request.user)
        return _rollback_response(version.project, version, request.user)


@extend_schema(request=None, responses={200: RollbackResponseSerializer})
class DefaultVersionRollbackApi(APIView):
    """POST to put the built-in default ensemble (settings.ENSEMBLE_DIR) in use again."""

    def post(self, request, pk):
        return _rollback_response(_admin_project(request, pk), None, request.user)


def _rollback_response(project, version, user):
    try:
        project = training.model_version_rollback(project, version, user)
    except training.TrainingError as error:
        _refused(error)
    in_use = None
    if project.model_version_id is not None:
        in_use = ModelVersionSerializer(training_selectors.model_version_get(user, project.model_version_id)).data
    return Response({"project": project.pk, "model_version": in_use})
