"""Projects hold studies of images; the ensemble adds predictions; people and models add mask versions."""
from django.conf import settings
from django.db import models


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    classes = models.JSONField(default=list, help_text="image-level classes, e.g. [\"normal\", \"lesion\"]")
    healthy_class = models.CharField(max_length=100, default="normal")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name

    @property
    def disease_classes(self):
        return [c for c in self.classes if c != self.healthy_class]


class Membership(models.Model):
    class Role(models.TextChoices):
        RADIOLOGIST = "radiologist"
        VIEWER = "viewer"

    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.RADIOLOGIST)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")]

    def __str__(self):
        return f"{self.user} in {self.project} as {self.role}"


class Study(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="studies")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self):
        return self.name


class Job(models.Model):
    """One upload and the ensemble run over its images."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source_name = models.CharField(max_length=300)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    imported = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    annotated = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="[{name, reason}] of files that were rejected")
    failure = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"job {self.pk} ({self.source_name})"

    @property
    def total(self):
        """Images to annotate: the new ones of the upload (duplicates were annotated when first imported)."""
        return self.imported

    @property
    def progress(self):
        return 1.0 if not self.total else self.annotated / self.total


class Image(models.Model):
    class ReviewStatus(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="images")
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="images")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="images")
    sha256 = models.CharField(max_length=64)
    file = models.FileField(upload_to="images/", max_length=300)
    original_name = models.CharField(max_length=300)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    label = models.CharField(max_length=100, blank=True, help_text="image-level label given with the upload")
    # The ensemble's verdict, filled in once by the annotation job.
    annotated_at = models.DateTimeField(null=True, blank=True)
    model_version = models.CharField(max_length=100, blank=True)
    predicted_label = models.CharField(max_length=100, blank=True)
    uncertainty = models.FloatField(null=True, blank=True, help_text="normalised predictive entropy, 0..1")
    flagged = models.BooleanField(default=False)
    flag_reason = models.TextField(blank=True)
    # Who is looking at it now: a claim keeps two reviewers off the same image until it expires.
    claimed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    last_served_at = models.DateTimeField(null=True, blank=True, help_text="breaks ties in the queue order")
    # The radiologist's decision.
    reviewed_label = models.CharField(max_length=100, blank=True, help_text="the radiologist's image-level diagnosis")
    review_status = models.CharField(max_length=20, choices=ReviewStatus.choices, default=ReviewStatus.PENDING,
                                     db_index=True)
    approved_mask = models.ForeignKey("Mask", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "sha256"], name="image_once_per_project")]
        indexes = [models.Index(fields=["project", "review_status", "-flagged", "-uncertainty"])]

    def __str__(self):
        return self.original_name


class Prediction(models.Model):
    """One model's opinion of one image."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="predictions")
    architecture = models.CharField(max_length=100)
    model_version = models.CharField(max_length=100)
    label = models.CharField(max_length=100)
    agrees = models.BooleanField()
    probabilities = models.JSONField(help_text="MC-Dropout mean per class, in the project's class order")
    std = models.JSONField(help_text="MC-Dropout standard deviation per class")
    entropy = models.FloatField(help_text="normalised predictive entropy of the MC mean")
    mutual_information = models.FloatField()
    heatmap = models.FileField(upload_to="heatmaps/", max_length=300)
    cam_class = models.CharField(max_length=100, help_text="the class the heatmap explains")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["image", "architecture", "model_version"],
                                               name="one_prediction_per_model_version")]

    def __str__(self):
        return f"{self.architecture} on {self.image}: {self.label}"


class Mask(models.Model):
    """A version of an image's mask; versions are only ever added, never overwritten."""

    class Source(models.TextChoices):
        MODEL = "model"
        HUMAN = "human"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="masks")
    version = models.PositiveIntegerField()
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    restored_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                      help_text="the older version whose pixels this one brings back")
    source = models.CharField(max_length=10, choices=Source.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    model_version = models.CharField(max_length=100, blank=True)
    file = models.FileField(upload_to="masks/", max_length=300, help_text="8-bit PNG, 0 or 255")
    pixels = models.PositiveIntegerField(help_text="foreground pixel count")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image", "version"]
        constraints = [models.UniqueConstraint(fields=["image", "version"], name="mask_version_unique")]

    def __str__(self):
        return f"{self.image} mask v{self.version} ({self.source})"
