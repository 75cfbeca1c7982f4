from django.contrib import admin

from annotator.models import Image, Job, Mask, Membership, ModelVersion, Prediction, Project, Study, TrainingRun
from annotator.tallies import images_delete


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "classes", "healthy_class", "created_at"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role"]
    list_filter = ["role", "project"]


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "created_at"]
    list_filter = ["project"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "source_name", "status", "imported", "annotated", "total", "created_at"]
    list_filter = ["status", "project"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["original_name", "project", "label", "predicted_label", "uncertainty", "flagged", "review_status"]
    list_filter = ["project", "review_status", "flagged", "predicted_label"]
    search_fields = ["original_name", "sha256"]
    raw_id_fields = ["approved_mask", "job", "study"]
    # Changed only by the annotation and review services, which keep the tallies and the audit trail.
    readonly_fields = ["project", "annotated_at", "review_status", "flagged"]

    def has_add_permission(self, request):
        return False  # images come in through uploads

    def delete_model(self, request, obj):
        images_delete(Image.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        images_delete(queryset)


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ["image", "architecture", "label", "agrees", "entropy", "model_version"]
    list_filter = ["architecture", "agrees"]
    raw_id_fields = ["image"]


@admin.register(Mask)
class MaskAdmin(admin.ModelAdmin):
    list_display = ["image", "version", "source", "author", "pixels", "created_at"]
    list_filter = ["source"]
    raw_id_fields = ["image", "parent", "restored_from"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "status", "created_at", "promoted_at"]
    list_filter = ["status", "project"]
    raw_id_fields = ["parent"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "status", "progress", "trigger", "created_at", "finished_at"]
    list_filter = ["status", "project"]
    raw_id_fields = ["base_version", "result"]
