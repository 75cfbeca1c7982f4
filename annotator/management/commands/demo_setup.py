"""Set up the embedded demo: an admin, a radiologist, and a project of real BUSI images queued for the ensemble."""
import json
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotator.annotation.services import jobs_requeue_unfinished
from annotator.finetune.services import training_runs_requeue_unfinished
from annotator.ingest.archive import UploadError, folder_entries, zip_entries
from annotator.ingest.services import upload_ingest
from annotator.models import Membership, Project

DEMO_SOURCE = settings.BASE_DIR / "demo" / "busi"  # images/ with labels.csv, and masks/ as reference masks


class Command(BaseCommand):
    help = "Create demo users (printing their passwords) and import a folder or zip of images as a demo project."

    def add_arguments(self, parser):
        parser.add_argument("--source", type=Path, default=DEMO_SOURCE,
                            help="a folder or zip of PNG/JPEG/DICOM images, optionally with labels.csv and masks/")
        parser.add_argument("--project", default="BUSI demo")

    def handle(self, *args, source, project, **options):
        manifest = json.loads((settings.ENSEMBLE_DIR / "manifest.json").read_text())
        admin = self._user("admin", staff=True)
        radiologist = self._user("radiologist", staff=False)
        project, _ = Project.objects.get_or_create(name=project, defaults={
            "classes": manifest["classes"], "healthy_class": manifest["healthy_class"],
            "description": "Breast ultrasound images from BUSI (Al-Dhabyani et al., Data in Brief 2020).",
        })
        Membership.objects.get_or_create(project=project, user=radiologist)
        resumed = jobs_requeue_unfinished()
        if resumed:
            self.stdout.write(f"{resumed} unfinished job(s) from an earlier run sent to the worker again.")
        resumed = training_runs_requeue_unfinished()
        if resumed:
            self.stdout.write(f"{resumed} unfinished fine-tuning run(s) sent to the worker again.")
        try:
            contents = zip_entries(source) if source.is_file() else folder_entries(source)
            job = upload_ingest(project, contents, source.name, admin)
        except UploadError as error:
            raise CommandError(f"{source}: {error}")
        self.stdout.write(f"Project {project.name!r}: {job.imported} new images queued for the ensemble, "
                          f"{job.duplicates} already imported, {len(job.errors)} rejected.")
        for error in job.errors:
            self.stdout.write(f"  rejected {error['name']}: {error['reason']}")

    def _user(self, username, staff):
        """Create the user or give it a fresh password, and print it: a demo's passwords are never guessable."""
        password = secrets.token_urlsafe(9)
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = staff
        user.set_password(password)
        user.save()
        self.stdout.write(self.style.SUCCESS(f"{'Admin' if staff else 'Radiologist'} login: {username} / {password}"))
        return user
