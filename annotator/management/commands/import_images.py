"""Import a server-side folder or zip of images into a project, as an upload would, and queue the ensemble on them."""
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotator.ingest.archive import UploadError, contents_extend, folder_entries, zip_entries
from annotator.ingest.services import upload_ingest
from annotator.models import Project
from annotator.serializers import ProjectSerializer


class Command(BaseCommand):
    help = ("Import a folder (subfolders included) or a zip of PNG/JPEG/DICOM images into a project, with labels "
            "and reference masks, and queue the ensemble on the new images.")

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="a folder or a zip")
        parser.add_argument("--project", required=True, help="the project's name")
        parser.add_argument("--labels", type=Path,
                            help="a CSV with 'filename' and 'label' columns (default: a labels.csv inside PATH)")
        parser.add_argument("--label-map", default="", metavar="FROM=TO,...",
                            help="rename labels before use, e.g. benign=lesion,malignant=lesion")
        parser.add_argument("--masks", type=Path, help="a folder of PNG reference masks matched by file name "
                                                       "(default: any folder named masks inside PATH)")
        parser.add_argument("--create", action="store_true", help="create the project if there is none by that name")
        parser.add_argument("--classes", default="", help="with --create: the classes, e.g. normal,lesion")
        parser.add_argument("--healthy", default="", help="with --create: the healthy class (default: the first)")

    def handle(self, *args, path, project, labels, label_map, masks, create, classes, healthy, **options):
        project = self._project(project, create, classes, healthy)
        label_map = self._label_map(label_map)
        started = time.monotonic()
        try:
            if path.is_file():
                contents = contents_extend(zip_entries(path), labels, masks)
            else:
                contents = folder_entries(path, labels, masks)
        except UploadError as error:
            raise CommandError(f"{path}: {error}")
        references_before = project.images.exclude(reference_mask="").count()
        with tqdm(total=len(contents.images), unit="image", desc=path.name) as progress:
            job = upload_ingest(project, contents, path.name, label_map=label_map,
                                on_image=lambda entry: progress.update())
        references = project.images.exclude(reference_mask="").count() - references_before
        self.stdout.write(f"Project {project.name!r}: {job.imported} new images, {references} reference masks added, "
                          f"{job.duplicates} already imported, {len(job.errors)} problems, in "
                          f"{time.monotonic() - started:.1f} s.")
        for error in job.errors:
            self.stdout.write(f"  {error['name']}: {error['reason']}")
        if job.imported:
            self.stdout.write(f"Job {job.pk} queued: the ensemble annotates the new images in a worker.")

    def _project(self, name, create, classes, healthy) -> Project:
        project = Project.objects.filter(name=name).first()
        if project is not None:
            return project
        if not create:
            raise CommandError(f"no project named {name!r}; add --create --classes A,B [--healthy A] to make one")
        class_list = [c.strip() for c in classes.split(",") if c.strip()]
        serializer = ProjectSerializer(data={"name": name, "classes": class_list,
                                             "healthy_class": healthy or (class_list[0] if class_list else "")})
        if not serializer.is_valid():
            raise CommandError(f"cannot create project {name!r}: {serializer.errors}")
        return serializer.save()

    def _label_map(self, text) -> dict[str, str]:
        pairs = [pair.split("=") for pair in text.split(",") if pair.strip()]
        if any(len(pair) != 2 or not all(part.strip() for part in pair) for pair in pairs):
            raise CommandError(f"--label-map {text!r}: give FROM=TO pairs separated by commas")
        return {source.strip(): target.strip() for source, target in pairs}
