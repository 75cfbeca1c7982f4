"""Bulk upload: good images import once, every bad file is named with a reason, nothing escapes the media folder."""
import hashlib
import hmac
import io
import json
import random
import struct
import zipfile

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from PIL import Image as PILImage
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, generate_uid

from annotator.ingest import services as ingest_services
from annotator.ingest.archive import folder_entries, zip_entries
from annotator.models import Image, Job, Mask, Study
from annotator.tallies import tallies_rebuild
from tests.conftest import dicom_bytes, png_bytes, real_images, zip_of
from tests.factories import box_mask, mask_png


def upload(team, archive, user=None):
    return team.api(user or team.admin).post(f"/api/projects/{team.project.pk}/uploads/", {"file": archive},
                                             format="multipart")


def test_upload_imports_real_images_with_labels_and_queues_one_job(team, django_capture_on_commit_callbacks):
    images = real_images(2)
    files = {f"scans/{path.name}": path.read_bytes() for path, _ in images}
    labels = {path.name: label for path, label in images}
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(team, zip_of(files, labels))
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.imported, job.total, job.errors, job.status) == (4, 4, [], "queued")
    assert len(callbacks) == 1  # one Celery job per upload, sent once the rows are committed
    stored = {i.original_name: i for i in team.project.images.all()}
    assert {name: image.label for name, image in stored.items()} == labels
    first = stored[images[0][0].name]
    with PILImage.open(first.file.path) as picture:
        assert picture.size == (first.width, first.height)


def test_reupload_is_idempotent_and_content_is_stored_once(team, media_root):
    files = {"a.png": png_bytes(value=10), "b.png": png_bytes(value=20)}
    assert upload(team, zip_of(files)).json()["imported"] == 2
    again = upload(team, zip_of({"copy-of-a.png": files["a.png"]})).json()
    assert (again["imported"], again["duplicates"], again["status"]) == (0, 1, "done")
    assert Image.objects.count() == 2
    assert len(list((media_root / "images").rglob("*.png"))) == 2


def test_bad_files_are_reported_by_name_and_the_good_ones_still_import(team, media_root, tmp_path):
    good = png_bytes(value=200)
    truncated = png_bytes(width=300, height=300)[:200]
    files = {
        "good.png": good,
        "corrupt.png": truncated,
        "notes.png": b"this is a text file, not a picture",
        "../escape.png": png_bytes(value=99),
        "/abs/root.png": png_bytes(value=98),
    }
    job = upload(team, zip_of(files)).json()
    assert job["imported"] == 1
    reasons = {e["name"]: e["reason"] for e in job["errors"]}
    assert set(reasons) == {"corrupt.png", "notes.png", "../escape.png", "/abs/root.png"}
    assert "corrupt or truncated" in reasons["corrupt.png"]
    assert "not an image" in reasons["notes.png"]
    assert "unsafe path" in reasons["../escape.png"] and "unsafe path" in reasons["/abs/root.png"]
    assert not (tmp_path / "escape.png").exists() and not (media_root.parent / "escape.png").exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(media_root in p.parents for p in written)


def test_decompression_bomb_and_oversized_files_are_rejected(team, settings):
    settings.IMAGE_MAX_PIXELS = 1000 * 1000
    settings.IMAGE_MAX_BYTES = 50_000
    bomb = io.BytesIO()
    PILImage.new("1", (4000, 4000), 0).save(bomb, format="PNG")  # a few KB that decode to 16 megapixels
    noise = PILImage.frombytes("L", (300, 300), bytes((i * 7919) % 251 for i in range(300 * 300)))
    big = io.BytesIO()
    noise.save(big, format="PNG", compress_level=0)
    job = upload(team, zip_of({"bomb.png": bomb.getvalue(), "big.png": big.getvalue(), "ok.png": png_bytes()}))
    reasons = {e["name"]: e["reason"] for e in job.json()["errors"]}
    assert "decompression bomb" in reasons["bomb.png"]
    assert "over the limit" in reasons["big.png"]
    assert job.json()["imported"] == 1


def test_an_unusable_upload_is_refused_whole_and_changes_nothing(team, settings):
    upload(team, zip_of({"keep.png": png_bytes(value=1)}))
    before = (Image.objects.count(), Job.objects.count())
    not_a_zip = io.BytesIO(b"PK but not really a zip")
    not_a_zip.name = "broken.zip"
    response = upload(team, not_a_zip)
    assert response.status_code == 400 and "not a readable zip" in response.json()["file"][0]
    settings.UPLOAD_MAX_FILES = 2
    response = upload(team, zip_of({"a.png": png_bytes(value=3), "b.png": png_bytes(value=4),
                                    "c.png": png_bytes(value=5)}))
    assert response.status_code == 400 and "holds 3 files; at most 2" in response.json()["file"][0]
    assert (Image.objects.count(), Job.objects.count()) == before


def test_labels_outside_the_project_classes_are_reported(team):
    job = upload(team, zip_of({"x.png": png_bytes()}, {"x.png": "tumour", "missing.png": "lesion"})).json()
    reasons = [e["reason"] for e in job["errors"]]
    assert any("'tumour' is not one of" in r for r in reasons)
    assert any("'missing.png': no such image" in r for r in reasons)
    assert Image.objects.get().label == ""


def test_upload_page_shows_rejected_files(team):
    client = team.client(team.admin)
    response = client.post(f"/projects/{team.project.pk}/upload/",
                           {"file": zip_of({"ok.png": png_bytes(), "bad.png": b"nope"})}, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "1 new images queued" in page and "bad.png" in page and "not an image" in page


def test_an_upload_succeeds_while_the_broker_is_down_and_the_sweep_sends_its_job_later(
        team, transactional_db, monkeypatch, caplog, settings):
    from celery import current_app
    from kombu.exceptions import OperationalError

    from annotator.enqueue import JOB_ANNOTATE
    from annotator.sweep import jobs_sweep

    def broker_down(job_id):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    task = current_app.tasks[JOB_ANNOTATE]
    monkeypatch.setattr(task, "delay", broker_down)  # rows commit for real here, so the send runs in the request
    response = upload(team, zip_of({"a.png": png_bytes(value=1)}))
    assert response.status_code == 201, response.content
    page = team.client(team.admin).post(f"/projects/{team.project.pk}/upload/",
                                        {"file": zip_of({"b.png": png_bytes(value=2)})}, follow=True)
    assert page.status_code == 200 and "1 new images queued" in page.content.decode()
    jobs = list(Job.objects.order_by("id"))
    assert [(job.status, job.imported) for job in jobs] == [("queued", 1), ("queued", 1)]
    assert all(f"{JOB_ANNOTATE} {job.pk} not sent" in caplog.text for job in jobs) and "refused" in caplog.text

    sent = []
    monkeypatch.setattr(task, "delay", sent.append)  # the broker is back, and holds no message of them
    monkeypatch.setattr("annotator.sweep.broker_task_args", lambda name: (set(), set()))  # waiting, delivered
    settings.JOB_SWEEP_GRACE_SECONDS = 0
    assert jobs_sweep() == sent == [job.pk for job in jobs]


def noise_png(width, height, seed=0) -> bytes:
    """A PNG that does not compress: its size on disk is about its pixel count."""
    picture = PILImage.frombytes("L", (width, height), random.Random(seed).randbytes(width * height))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def mask_bytes(size, box) -> bytes:
    return mask_png(box_mask(size, box))


def stored_pixels(field) -> np.ndarray:
    with PILImage.open(field.path) as picture:
        return np.asarray(picture)


def header_rewritten(archive: bytes, name: str, declared: int) -> io.BytesIO:
    """The zip with `name`'s uncompressed size set to `declared` in its local and central headers, as a forger
    would to slip a bomb past a check of the headers."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        local = z.getinfo(name).header_offset
    data = bytearray(archive)
    struct.pack_into("<I", data, local + 22, declared)
    central = data.find(b"PK\x01\x02")
    while data[central + 46:central + 46 + struct.unpack_from("<H", data, central + 28)[0]] != name.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, declared)
    buffer = io.BytesIO(bytes(data))
    buffer.name = "forged.zip"
    return buffer


def test_zip_bombs_are_caught_by_what_members_hold_not_what_headers_say(team, settings):
    settings.IMAGE_MAX_BYTES = 50_000
    settings.UPLOAD_MAX_COMPRESSION_RATIO = 100
    short = png_bytes(value=7)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("liar.png", random.Random(1).randbytes(120_000))  # incompressible: only the header lies
        z.writestr("short.png", short + b"trailing bytes the header leaves out")
        z.writestr("zeros.png", bytes(3 * 1024**2))  # 3 MB of zeros in a few KB, within no limit but the ratio
        z.writestr("zeros-liar.png", bytes(3 * 1024**2))
        z.writestr("ok.png", png_bytes(value=8))
    forged = header_rewritten(archive.getvalue(), "liar.png", 1000)
    forged = header_rewritten(forged.getvalue(), "short.png", len(short))
    forged = header_rewritten(forged.getvalue(), "zeros-liar.png", 1000)
    settings.IMAGE_MAX_BYTES = 4 * 1024**2
    reasons = {e["name"]: e["reason"] for e in upload(team, forged).json()["errors"]}
    assert "header says" in reasons["short.png"] and "damaged or forged" in reasons["short.png"]
    assert "compressed more than 100:1" in reasons["zeros.png"]
    assert "compressed more than 100:1" in reasons["zeros-liar.png"]  # found while reading, not from the header
    settings.IMAGE_MAX_BYTES = 50_000
    job = upload(team, header_rewritten(forged.getvalue(), "liar.png", 1000)).json()
    reasons = {e["name"]: e["reason"] for e in job["errors"]}
    assert "over the limit of 50000 bytes uncompressed (its header said 1000" in reasons["liar.png"]
    assert set(reasons) == {"liar.png", "short.png", "zeros.png", "zeros-liar.png"}
    assert list(Image.objects.values_list("original_name", flat=True)) == ["ok.png"]


def test_a_large_upload_is_spooled_to_disk_and_read_in_pieces(team, settings, monkeypatch):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 10_000
    files = {f"scan{i}.png": noise_png(200, 150, seed=i) for i in range(4)}
    archive = zip_of(files)
    total = len(archive.getvalue())
    read_sizes = []
    real_zip_entries = zip_entries

    class ReadSpy:
        def __init__(self, file):
            self.file = file

        def read(self, *size):
            data = self.file.read(*size)
            read_sizes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.file, name)

    def spied(upload):
        assert isinstance(upload, TemporaryUploadedFile)  # Django spooled it to disk
        return real_zip_entries(ReadSpy(upload.file))

    monkeypatch.setattr(ingest_services, "zip_entries", spied)
    job = upload(team, archive).json()
    assert (job["imported"], job["errors"]) == (4, [])
    assert max(read_sizes) < total / 3  # member by member, never the whole archive


def test_wrong_label_files_are_reported_and_the_images_still_import(team):
    cases = {
        "columns": b"name;diagnosis\nnew.png;lesion\n",
        "encoding": "filename,label\nnew.png,l\xe9sion\n".encode("latin-1"),
    }
    reasons = {}
    for value, (case, csv_bytes) in enumerate(cases.items()):
        job = upload(team, zip_of({"labels.csv": csv_bytes, f"{case}.png": png_bytes(value=value)})).json()
        assert job["imported"] == 1
        reasons[case] = [e["reason"] for e in job["errors"] if e["name"] == "labels.csv"]
    assert "'filename' and 'label' columns (found ['name;diagnosis'])" in reasons["columns"][0]
    assert "not UTF-8" in reasons["encoding"][0] and "no labels were applied" in reasons["encoding"][0]
    assert set(Image.objects.values_list("label", flat=True)) == {""}


def test_reference_masks_come_with_the_upload_apart_from_model_output(team, settings):
    size = (64, 48)
    files = {
        "scans/a.png": png_bytes(value=10), "masks/a_mask.png": mask_bytes(size, (0, 0, 10, 10)),
        "scans/b.png": png_bytes(value=20), "masks/b_mask_1.png": mask_bytes(size, (0, 0, 5, 5)),
        "masks/b_mask_2.png": mask_bytes(size, (30, 30, 40, 40)),
        "scans/c.png": png_bytes(value=30), "masks/c.png": mask_bytes((32, 32), (0, 0, 5, 5)),
        "masks/nobody_mask.png": mask_bytes(size, (0, 0, 5, 5)),
        "left/d.png": png_bytes(value=40), "right/d.png": png_bytes(value=50),
        "masks/d_mask.png": mask_bytes(size, (0, 0, 5, 5)),
    }
    job = upload(team, zip_of(files)).json()
    reasons = {e["name"]: e["reason"] for e in job["errors"]}
    assert "the mask is 32x32 but the image is 64x48; c.png has no reference mask" in reasons["masks/c.png"]
    assert "no image named 'nobody'" in reasons["masks/nobody_mask.png"]
    assert "2 images are named 'd'; cannot tell which" in reasons["masks/d_mask.png"]
    assert job["imported"] == 5 and len(reasons) == 3
    images = {i.original_name: i for i in Image.objects.all()}
    expected_b = box_mask(size, (0, 0, 5, 5)) | box_mask(size, (30, 30, 40, 40))
    assert np.array_equal(stored_pixels(images["b.png"].reference_mask), expected_b.astype(np.uint8) * 255)
    assert np.array_equal(stored_pixels(images["a.png"].reference_mask) > 0, box_mask(size, (0, 0, 10, 10)))
    assert not images["c.png"].reference_mask
    assert not Mask.objects.exists()  # ground truth is never a mask version, so never what the queue shows
    api = team.api(team.radiologist)
    detail = api.get(f"/api/images/{images['b.png'].pk}/").json()
    assert detail["reference_mask_url"].endswith(f"/api/images/{images['b.png'].pk}/reference.png")
    response = api.get(f"/api/images/{images['b.png'].pk}/reference.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert api.get(f"/api/images/{images['c.png'].pk}/").json()["reference_mask_url"] is None
    assert api.get(f"/api/images/{images['c.png'].pk}/reference.png").status_code == 404


def test_a_reference_mask_that_is_no_image_is_reported_in_words(team):
    job = upload(team, zip_of({"a.png": png_bytes(), "masks/a_mask.png": b"not a picture"})).json()
    assert job["errors"] == [{"name": "masks/a_mask.png", "reason": "not a PNG image; a.png has no reference mask"}]


def test_names_with_control_or_formatting_characters_or_too_long_are_rejected_by_name_and_store_nothing(
        team, media_root):
    size = (64, 48)
    long_name = "x" * 400 + ".png"
    files = {
        "new\nline.png": png_bytes(value=1), "tab\tname.png": png_bytes(value=2),
        "evil\u202egnp.png": png_bytes(value=3), "zero\u200bwidth.png": png_bytes(value=4),
        long_name: png_bytes(value=5), "scans\x01/inside.png": png_bytes(value=6),
        "ok.png": png_bytes(value=7), "masks/ok_mask.png": mask_bytes(size, (0, 0, 10, 10)),
        "masks/ok_mask\n.png": mask_bytes(size, (0, 0, 20, 20)),
        "masks/new\nline_mask.png": mask_bytes(size, (1, 1, 5, 5)),
    }
    response = upload(team, zip_of(files))
    assert response.status_code == 201, response.content
    job = response.json()
    reasons = {e["name"]: e["reason"] for e in job["errors"]}
    shown = ["new\\nline.png", "tab\\tname.png", "evil\\u202egnp.png", "zero\\u200bwidth.png",
             "scans\\x01/inside.png", "masks/ok_mask\\n.png", "masks/new\\nline_mask.png"]
    assert set(reasons) == {*shown, long_name}
    assert all("no control or invisible formatting characters" in reasons[name] for name in shown)
    assert "\\u202e" in reasons["evil\\u202egnp.png"]
    assert "404 characters long; at most 300" in reasons[long_name]
    assert job["imported"] == 1 and [image.original_name for image in Image.objects.all()] == ["ok.png"]
    reference = Image.objects.get().reference_mask
    assert np.array_equal(stored_pixels(reference) > 0, box_mask(size, (0, 0, 10, 10)))  # the good mask only
    assert len(list((media_root / "images").rglob("*.*"))) == 1  # no file of a rejected image is stored
    page = team.client(team.admin).get(f"/projects/{team.project.pk}/").content.decode()
    assert "evil\\u202egnp.png" in page and "\u202e" not in page


def test_a_folder_import_rejects_the_same_names(team, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png_bytes(value=1))
    (folder / "new\nline.png").write_bytes(png_bytes(value=2))
    masks = tmp_path / "given-masks"
    masks.mkdir()
    (masks / "ok\u202e_mask.png").write_bytes(mask_bytes((64, 48), (0, 0, 5, 5)))
    job = ingest_services.upload_ingest(team.project, folder_entries(folder, masks_folder=masks), "scans")
    assert job.imported == 1
    assert {e["name"] for e in job.errors} == {"new\\nline.png", "given-masks/ok\\u202e_mask.png"}


def test_a_reupload_fills_in_what_was_missing_and_overwrites_nothing(team):
    size = (64, 48)
    scan = png_bytes(value=10)
    upload(team, zip_of({"a.png": scan}))
    image = Image.objects.get()
    image.reviewed_label, image.review_status = "normal", Image.ReviewStatus.APPROVED
    image.save()
    tallies_rebuild()  # decided behind the services' back
    job = upload(team, zip_of({"a.png": scan, "masks/a.png": mask_bytes(size, (0, 0, 4, 4))}, {"a.png": "lesion"}))
    assert (job.json()["imported"], job.json()["duplicates"], job.json()["errors"]) == (0, 1, [])
    image.refresh_from_db()
    first_reference = image.reference_mask.name
    assert (image.label, image.reviewed_label, image.review_status) == ("lesion", "normal", "approved")
    assert first_reference.startswith("reference/")
    job = upload(team, zip_of({"copy.png": scan, "masks/copy.png": mask_bytes(size, (9, 9, 20, 20))},
                              {"copy.png": "normal"})).json()
    reasons = {e["name"]: e["reason"] for e in job["errors"]}
    assert "labelled 'lesion'; the label 'normal' was not applied" in reasons["copy.png"]
    assert "with another reference mask; kept that one" in reasons["masks/copy.png"]
    image.refresh_from_db()
    assert (Image.objects.count(), image.label, image.reference_mask.name) == (1, "lesion", first_reference)
    again = upload(team, zip_of({"a.png": scan, "masks/a.png": mask_bytes(size, (0, 0, 4, 4))},
                                {"a.png": "lesion"})).json()
    assert (again["duplicates"], again["errors"]) == (1, [])  # the same upload again: nothing to say


CT_PIXELS = np.array([[0, 50, 70], [130, 150, 200]], dtype=np.uint16)  # x 2 - 100: -100, 0, 40, 160, 200, 300 HU
CT_WINDOWED = np.array([[0, 0, 51], [204, 255, 255]], dtype=np.uint8)  # window 100 ± 100 HU onto 0..255


def test_dicom_pixels_are_rescaled_windowed_and_stored_as_png(team, media_root):
    study = generate_uid()
    files = {
        "ct/mono2.dcm": dicom_bytes(CT_PIXELS, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=[100, 50],
                                    WindowWidth=[200, 100], StudyInstanceUID=study, InstanceNumber=1),
        "ct/mono1": dicom_bytes(CT_PIXELS, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100,
                                WindowCenter=100, WindowWidth=200, StudyInstanceUID=study, InstanceNumber=2),
        "ct/no-window.dcm": dicom_bytes(np.array([[-20, 20], [140, 180]], dtype=np.int16), StudyInstanceUID=study,
                                        InstanceNumber=3),
        "ct/cine.dcm": dicom_bytes(np.stack([np.full((2, 3), v, np.uint16) for v in (0, 40, 200)]),
                                   WindowCenter=100, WindowWidth=200, StudyInstanceUID=study, InstanceNumber=4),
    }
    job = upload(team, zip_of(files)).json()
    assert (job["imported"], job["errors"]) == (4, [])
    by_instance = {i.instance_number: i for i in Image.objects.all()}
    mono2, mono1, no_window, cine = (by_instance[n] for n in (1, 2, 3, 4))
    assert np.array_equal(stored_pixels(mono2.file), CT_WINDOWED)
    assert np.array_equal(stored_pixels(mono1.file), 255 - CT_WINDOWED)
    assert np.array_equal(stored_pixels(no_window.file), [[0, 51], [204, 255]])  # min-max
    assert np.array_equal(stored_pixels(cine.file), np.full((2, 3), 51))  # the middle frame
    assert (mono2.width, mono2.height) == (3, 2)
    images = by_instance
    assert all(i.file.name.endswith(".png") for i in images.values())
    assert not [p for p in media_root.rglob("*") if p.is_file() and not p.name.endswith(".png")]  # no .dcm kept


def test_dicom_studies_are_grouped_and_patients_not_identified(team):
    study, other_study = generate_uid(), generate_uid()
    patient = {"PatientName": "Doe^Jane", "PatientID": "MRN-424242", "PatientBirthDate": "19700101",
               "Modality": "US", "StudyDate": "20240131", "WindowCenter": 100, "WindowWidth": 200}
    files = {
        "one.dcm": dicom_bytes(CT_PIXELS, StudyInstanceUID=study, SeriesInstanceUID="1.2.3", SeriesDescription="B-mode",
                               InstanceNumber=7, StudyDescription="Breast left", **patient),
        "two.dcm": dicom_bytes(CT_PIXELS + 10, StudyInstanceUID=study, SeriesInstanceUID="1.2.4", InstanceNumber=1,
                               StudyDescription="Breast left", **patient),
        "Doe_Jane_MRN-424242.dcm": dicom_bytes(CT_PIXELS + 20, StudyInstanceUID=other_study, **patient),
        "plain.png": png_bytes(),
    }
    assert upload(team, zip_of(files)).json()["imported"] == 4
    upload(team, zip_of({"four.dcm": dicom_bytes(CT_PIXELS + 30, StudyInstanceUID=study, **patient)}))
    studies = {s.study_uid: s for s in team.project.studies.all()}
    assert len(studies) == 3 and studies[study].images.count() == 3  # one study per StudyInstanceUID, across uploads
    assert (studies[study].name, studies[study].modality) == ("Breast left", "US")
    assert studies[other_study].name == "2024-01-31"
    assert studies[""].name == "upload.zip"  # the plain PNG's: the upload's own study
    expected_key = hmac.new(settings.SECRET_KEY.encode(), b"MRN-424242", hashlib.sha256).hexdigest()[:32]
    assert studies[study].patient_key == studies[other_study].patient_key == expected_key
    one = Image.objects.get(series_uid="1.2.3")
    assert one.original_name == f"dicom-{one.sha256[:12]}.png"  # upload file names may name the patient
    assert (one.series_uid, one.series_description, one.instance_number) == ("1.2.3", "B-mode", 7)
    api = team.api(team.radiologist)
    detail = api.get(f"/api/images/{one.pk}/")
    assert detail.json()["study"] == {"id": one.study_id, "name": "Breast left", "modality": "US"}
    assert detail.json()["series_description"] == "B-mode"
    shown = detail.content.decode() + api.get(f"/api/projects/{team.project.pk}/images/").content.decode()
    shown += team.client(team.radiologist).get(f"/review/images/{one.pk}/").content.decode()
    stored = json.dumps(list(Study.objects.values()) + list(Image.objects.values()), default=str)
    for identifier in ("Doe", "Jane", "MRN-424242", "19700101", expected_key):
        assert identifier not in shown, identifier
    for identifier in ("Doe", "Jane", "MRN-424242", "19700101"):
        assert identifier not in stored, identifier


def test_dicom_text_with_control_characters_is_stored_without_them(team):
    data = dicom_bytes(CT_PIXELS, StudyInstanceUID=generate_uid(), StudyDescription="Breast\x00 US",
                       SeriesDescription="left\nside", Modality="US")
    job = upload(team, zip_of({"scan.dcm": data})).json()
    assert (job["imported"], job["errors"]) == (1, [])
    image = Image.objects.select_related("study").get()
    assert (image.study.name, image.series_description) == ("Breast_ US", "left_side")


def test_unusable_dicom_files_are_rejected_by_name(team, settings):
    settings.IMAGE_MAX_PIXELS = 100
    files = {
        "jpeg-ls.dcm": dicom_bytes(CT_PIXELS, compressed_syntax=JPEGLSLossless),
        "huge.dcm": dicom_bytes(np.zeros((20, 20), dtype=np.uint16)),
        "truncated.dcm": dicom_bytes(np.zeros((8, 8), dtype=np.uint16))[:-40],
        "colour-map.dcm": dicom_bytes(CT_PIXELS, photometric="PALETTE COLOR"),
        # pydicom refuses to write a slope of "abc", so it is put into the written bytes
        "bad-slope.dcm": dicom_bytes(CT_PIXELS, RescaleSlope="9.9").replace(b"9.9 ", b"abc "),
        "ok.dcm": dicom_bytes(CT_PIXELS),
    }
    job = upload(team, zip_of(files)).json()
    reasons = {e["name"]: e["reason"] for e in job["errors"]}
    assert "JPEG-LS Lossless Image Compression" in reasons["jpeg-ls.dcm"]
    assert "needs a decoder that is not installed" in reasons["jpeg-ls.dcm"]
    assert "possible decompression bomb" in reasons["huge.dcm"]
    assert "corrupt or truncated pixel data" in reasons["truncated.dcm"]
    assert "PALETTE COLOR is not supported" in reasons["colour-map.dcm"]
    assert "unusable DICOM attributes" in reasons["bad-slope.dcm"]
    assert job["imported"] == 1


def test_dicom_pixel_data_no_decoder_can_read_is_reported_in_words(team, settings):
    settings.IMAGE_MAX_PIXELS = 100
    files = {"broken-jpeg.dcm": dicom_bytes(CT_PIXELS, compressed_syntax=JPEGBaseline8Bit),
             "huge.dcm": dicom_bytes(np.zeros((20, 20), dtype=np.uint16))}
    reasons = {e["name"]: e["reason"] for e in upload(team, zip_of(files)).json()["errors"]}
    assert reasons["broken-jpeg.dcm"].startswith("corrupt or truncated pixel data (")
    assert "cannot identify image file" in reasons["broken-jpeg.dcm"] and "object at" not in reasons["broken-jpeg.dcm"]
    assert reasons["huge.dcm"] == "20x20 pixels is over the limit of 100 (possible decompression bomb)"  # said once
