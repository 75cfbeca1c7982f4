"""One cast for every test: an admin, a radiologist and a viewer of the project, and an outsider."""
import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_BUSI = ROOT.parent / "shared" / "data" / "busi"
DEMO_BUSI = ROOT / "demo" / "busi"
PASSWORD = "a-long-test-password"


@dataclass
class Team:
    project: object
    admin: object
    radiologist: object
    viewer: object
    outsider: object

    def client(self, user):
        from django.test import Client

        client = Client()
        client.force_login(user)
        return client

    def api(self, user):
        from rest_framework.test import APIClient

        client = APIClient()
        client.force_authenticate(user)
        return client


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def team(db):
    from django.contrib.auth import get_user_model

    from annotator.models import Membership, Project

    users = get_user_model().objects
    project = Project.objects.create(name="BUSI", classes=["normal", "lesion"], healthy_class="normal")
    team = Team(
        project=project,
        admin=users.create_user("admin", password=PASSWORD, is_staff=True, is_superuser=True),
        radiologist=users.create_user("radiologist", password=PASSWORD),
        viewer=users.create_user("viewer", password=PASSWORD),
        outsider=users.create_user("outsider", password=PASSWORD),
    )
    Membership.objects.create(project=project, user=team.radiologist, role=Membership.Role.RADIOLOGIST)
    Membership.objects.create(project=project, user=team.viewer, role=Membership.Role.VIEWER)
    other = Project.objects.create(name="Elsewhere", classes=["normal", "lesion"], healthy_class="normal")
    Membership.objects.create(project=other, user=team.outsider, role=Membership.Role.RADIOLOGIST)
    yield team
    # Whatever a test did through the services, the tallies the pages count with still match the images.
    from annotator.models import Image
    from annotator.tallies import tallies_kept, tallies_recount

    assert tallies_kept() == tallies_recount(Image.objects.all()), "the image tallies drifted from the images"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy CPU OpenMP threads waiting on each other made the
    engine's tests six times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def at_once(action, users) -> dict:
    """`action(user)` for every user at the same moment, each in a thread on a database connection of its own; the
    results by user."""
    import threading

    from django.db import connection

    barrier = threading.Barrier(len(users))
    results = {}

    def act(user):
        barrier.wait()
        try:
            results[user] = action(user)
        finally:
            connection.close()

    threads = [threading.Thread(target=act, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def real_images(count_per_label: int) -> list[tuple[Path, str]]:
    """Real BUSI images with their lesion/normal label: the shared data set when present, else the demo's copy."""
    if SHARED_BUSI.is_dir():
        rows = list(csv.DictReader((SHARED_BUSI / "manifest.csv").open()))
        picked = {"normal": [], "lesion": []}
        for row in rows:
            label = "normal" if row["label"] == "normal" else "lesion"
            if len(picked[label]) < count_per_label:
                picked[label].append((SHARED_BUSI / row["filename"], label))
    else:
        rows = list(csv.DictReader((DEMO_BUSI / "images" / "labels.csv").open()))
        picked = {"normal": [], "lesion": []}
        for row in rows:
            if len(picked[row["label"]]) < count_per_label:
                picked[row["label"]].append((DEMO_BUSI / "images" / row["filename"], row["label"]))
    return picked["normal"] + picked["lesion"]


def zip_of(files: dict[str, bytes], labels: dict[str, str] | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        if labels is not None:
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["filename", "label"])
            writer.writerows(labels.items())
            archive.writestr("labels.csv", text.getvalue())
    buffer.seek(0)
    buffer.name = "upload.zip"
    return buffer


def png_bytes(width=64, height=48, value=128, mode="L") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(pixels, photometric="MONOCHROME2", compressed_syntax=None, **tags) -> bytes:
    """A small DICOM file written by pydicom: 16-bit grayscale `pixels` (rows x columns, or frames x rows x columns)
    stored uncompressed, or a placeholder fragment under `compressed_syntax`; `tags` are set as given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = compressed_syntax or ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    dataset.PixelData = encapsulate([b"\xff\xd8 not decoded"]) if compressed_syntax else pixels.astype(
        pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
