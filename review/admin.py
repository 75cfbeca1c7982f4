from django.contrib import admin

from review.models import Review


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["image", "decision", "reviewer", "created_at"]
    list_filter = ["decision"]
    raw_id_fields = ["image", "mask"]
