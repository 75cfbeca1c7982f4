"""Bulk upload: good images import once, every bad file is named with a reason, nothing escapes the media folder."""
import io
import zipfile

from PIL import Image as PILImage

from annotator.models import Image, Job
from tests.conftest import png_bytes, real_images, zip_of


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


def test_an_unusable_upload_is_refused_whole_and_changes_nothing(team):
    upload(team, zip_of({"keep.png": png_bytes(value=1)}))
    before = (Image.objects.count(), Job.objects.count())
    not_a_zip = io.BytesIO(b"PK but not really a zip")
    not_a_zip.name = "broken.zip"
    response = upload(team, not_a_zip)
    assert response.status_code == 400 and "not a readable zip" in response.json()["file"][0]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("new.png", png_bytes(value=2))
        z.writestr("labels.csv", "name;diagnosis\nnew.png;lesion\n")
    archive.seek(0)
    archive.name = "wrong-csv.zip"
    response = upload(team, archive)
    assert response.status_code == 400 and "'filename' and 'label'" in response.json()["file"][0]
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
