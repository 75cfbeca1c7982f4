"""The audit trail of radiologists' decisions; the current state lives on `annotator.Image`."""
from django.conf import settings
from django.db import models


class Review(models.Model):
    class Decision(models.TextChoices):
        APPROVED = "approved"
        REJECTED = "rejected"
        REQUEUED = "requeued"

    image = models.ForeignKey("annotator.Image", on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    decision = models.CharField(max_length=20, choices=Decision.choices)
    mask = models.ForeignKey("annotator.Mask", null=True, blank=True, on_delete=models.RESTRICT, related_name="+")
    label = models.CharField(max_length=100, blank=True, help_text="the image-level diagnosis given with the decision")
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.image} {self.decision} by {self.reviewer}"
