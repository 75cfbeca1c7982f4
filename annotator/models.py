"""Projects hold studies of images; the ensemble adds predictions; people and models add mask versions."""
from django.conf import settings
from django.db import models


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    classes = models.JSONField(default=list, help_text="image-level classes, e.g. [\"normal\", \"lesion\"]")
    healthy_class = models.CharField(max_length=100, default="normal")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")
    model_version = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.RESTRICT,
                                      related_name="+", help_text="the ensemble in use; none: settings.ENSEMBLE_DIR")
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
    """An upload, or a DICOM study. Patient identifiers are never stored: `patient_key` is a salted hash of the
    DICOM PatientID, enough to group one patient's studies and nothing more."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="studies")
    name = models.CharField(max_length=200)
    study_uid = models.CharField(max_length=128, blank=True, help_text="DICOM StudyInstanceUID")
    patient_key = models.CharField(max_length=64, blank=True, help_text="salted hash of the DICOM PatientID")
    modality = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"
        constraints = [models.UniqueConstraint(fields=["project", "study_uid"], condition=~models.Q(study_uid=""),
                                               name="dicom_study_once_per_project")]

    def __str__(self):
        return self.name


# The states of work done in the background by a worker: an upload's annotation job, a fine-tuning run.
WORK_STATUSES = [("QUEUED", "queued"), ("RUNNING", "running"), ("DONE", "done"), ("FAILED", "failed")]


class BackgroundWork(models.Model):
    """What every kind of background work records: why it failed, when it was asked for, started and ended, and when
    its worker last said it was still on it (its lease: work whose worker went silent may be taken over)."""

    failure = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]


class Job(BackgroundWork):
    """One upload and the ensemble run over its images."""

    Status = models.TextChoices("JobStatus", WORK_STATUSES)
    UNFINISHED = (Status.QUEUED, Status.RUNNING)  # a worker still has to do (or finish) it

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source_name = models.CharField(max_length=300)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    imported = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    annotated = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="[{name, reason}] of files that were rejected")

    def __str__(self):
        return f"job {self.pk} ({self.source_name})"

    @property
    def total(self):
        """Images to annotate: the new ones of the upload (duplicates were annotated when first imported)."""
        return self.imported

    @property
    def progress(self):
        return 1.0 if not self.total else self.annotated / self.total


# The review queue's order: flagged first, the most uncertain first, then the least recently served.
QUEUE_ORDER = (models.F("flagged").desc(), models.F("uncertainty").desc(),
               models.F("last_served_at").asc(nulls_first=True), "id")
# Its index columns. SQLite has no NULLS FIRST in an index (its ascending order puts them first anyway); PostgreSQL
# walks the index in the order of the first two and sorts the ties of equal uncertainty, which are few.
QUEUE_INDEX_ORDER = (models.F("flagged").desc(), models.F("uncertainty").desc(), "last_served_at", "id")


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
    # Ground truth that came with the upload (e.g. a labelled data set), kept apart from model output and reviews.
    reference_mask = models.FileField(upload_to="reference/", max_length=300, blank=True,
                                      help_text="8-bit PNG, 0 or 255, imported with the image")
    # DICOM grouping and display window, where the image came from a DICOM file.
    series_uid = models.CharField(max_length=128, blank=True)
    series_description = models.CharField(max_length=200, blank=True)
    instance_number = models.IntegerField(null=True, blank=True)
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
    approved_mask = models.ForeignKey("Mask", null=True, blank=True, on_delete=models.RESTRICT, related_name="+")
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "sha256"], name="image_once_per_project")]
        # Each hot listing walks one of these in its own order and stops after a page, whatever the project's size.
        indexes = [
            models.Index("project", "review_status", *QUEUE_INDEX_ORDER,
                         condition=models.Q(annotated_at__isnull=False), name="image_queue_in_project"),
            models.Index("review_status", *QUEUE_INDEX_ORDER, condition=models.Q(annotated_at__isnull=False),
                         name="image_queue"),
            models.Index("project", models.F("flagged").desc(), models.F("uncertainty").desc(), "id",
                         name="image_project_page"),
            models.Index("project", "id", name="image_project_by_id"),
            models.Index("claim_expires_at", condition=models.Q(claim_expires_at__isnull=False), name="image_claims"),
        ]

    def __str__(self):
        return self.original_name


class ImageTally(models.Model):
    """How many of a project's images are in each state, kept up to date by the services that change the state
    (annotator.tallies), so that pages count without reading the images."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tallies")
    annotated = models.BooleanField()
    review_status = models.CharField(max_length=20, choices=Image.ReviewStatus.choices)
    flagged = models.BooleanField()
    count = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "annotated", "review_status", "flagged"],
                                               name="tally_once_per_state")]

    def __str__(self):
        return f"{self.project_id} annotated={self.annotated} {self.review_status} flagged={self.flagged}: {self.count}"


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
    """A version of an image's mask; versions are only ever added, never overwritten. The latest version is what the
    image page shows (annotator.masks.selectors); `parent` is the version a drawing started from."""

    class Source(models.TextChoices):
        MODEL = "model"
        HUMAN = "human"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="masks")
    version = models.PositiveIntegerField()
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.RESTRICT, related_name="children")
    restored_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.RESTRICT, related_name="+",
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


class CandidateMask(models.Model):
    """A mask the engine made beside its proposal, for the image page to show as its own layer: the panel's consensus
    and the segmentation member's mask. One of them became the proposal (the first model mask version), as the
    version's gate chose; ensembles without a member store none."""

    class Source(models.TextChoices):
        CONSENSUS = "consensus"
        SEGMENTATION = "segmentation"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="candidate_masks")
    model_version = models.CharField(max_length=100)
    source = models.CharField(max_length=20, choices=Source.choices)
    proposed = models.BooleanField(help_text="whether this one became the proposal")
    file = models.FileField(upload_to="candidates/", max_length=300, help_text="8-bit PNG, 0 or 255")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["image", "model_version", "source"],
                                               name="one_candidate_mask_per_source_and_version")]

    def __str__(self):
        return f"{self.source} mask of {self.image} by {self.model_version}"


class ModelVersion(models.Model):
    """One trained ensemble of a project: its folder (safetensors + manifest.json) and its held-out metrics."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate"  # trained, not yet judged
        PROMOTED = "promoted"  # passed the gate; the project uses it unless rolled back
        NOT_PROMOTED = "not_promoted"  # worse than the version in use on the held-out split; kept for the record

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    name = models.CharField(max_length=100)
    folder = models.CharField(max_length=500, help_text="the checkpoint folder, as ml.load_ensemble reads it")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
                               help_text="the version it was fine-tuned from")
    manifest = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, help_text="this version's metrics on the held-out validation split")
    compared_metrics = models.JSONField(default=dict, blank=True,
                                        help_text="the version in use then, on the same split, side by side")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE)
    decision = models.TextField(blank=True, help_text="why it was promoted or not")
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="model_version_name_unique")]

    def __str__(self):
        return f"{self.project} {self.name}"


class TrainingRun(BackgroundWork):
    """Fine-tuning a project's ensemble on its approved labels and masks, in a worker; unlike a job, it can be
    cancelled."""

    Status = models.TextChoices("TrainingRunStatus", WORK_STATUSES + [("CANCELLED", "cancelled")])
    UNFINISHED = (Status.QUEUED, Status.RUNNING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_runs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    trigger = models.CharField(max_length=20, default="manual", help_text="manual, or auto after N approvals")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    attempt = models.PositiveIntegerField(default=0, help_text="starts so far; a worker restart starts it again")
    progress = models.FloatField(default=0.0, help_text="0..1")
    message = models.TextField(blank=True, help_text="what it is doing now, for the page")
    base_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+", help_text="the version it starts from")
    result = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    images_used = models.PositiveIntegerField(default=0)
    masks_used = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"training {self.pk} of {self.project} ({self.status})"
