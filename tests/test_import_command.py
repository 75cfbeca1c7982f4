"""`manage.py import_images`: a server-side folder or zip in one step, with labels, reference masks and the job."""
import csv
import shutil

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image as PILImage

from annotator.models import Image, Job, Mask, Project
from tests.conftest import DEMO_BUSI, SHARED_BUSI, dicom_bytes, png_bytes, zip_of
from tests.factories import box_mask, mask_png


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("import_images", *map(str, args), stdout=out)
    return out.getvalue()


@pytest.fixture
def busi_like(tmp_path):
    """BUSI's layout: images/<class>/<stem>.png, masks/<class>/<stem>_mask[_n].png and a manifest beside them."""
    root = tmp_path / "busi"
    rows = [("images/benign/benign_1.png", "benign"), ("images/malignant/malignant_1.png", "malignant"),
            ("images/normal/normal_1.png", "normal")]
    for value, (name, _) in enumerate(rows):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(value=value * 50))
    (root / "masks/benign").mkdir(parents=True)
    (root / "masks/malignant").mkdir(parents=True)
    (root / "masks/benign/benign_1_mask.png").write_bytes(mask_png(box_mask((64, 48), (0, 0, 8, 8))))
    (root / "masks/malignant/malignant_1_mask.png").write_bytes(mask_png(box_mask((64, 48), (10, 10, 20, 20))))
    (root / "masks/malignant/malignant_1_mask_1.png").write_bytes(mask_png(box_mask((64, 48), (30, 5, 40, 9))))
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "mask_path"])
        writer.writerows((name, label, "") for name, label in rows)
    return root


def test_a_busi_style_folder_imports_in_one_step_with_labels_masks_and_a_job(db, busi_like,
                                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        out = run(busi_like, "--project", "BUSI", "--create", "--classes", "normal,lesion", "--healthy", "normal",
                  "--labels", busi_like / "manifest.csv", "--masks", busi_like / "masks",
                  "--label-map", "benign=lesion,malignant=lesion")
    assert "3 new images, 2 reference masks added, 0 already imported, 0 problems" in out
    project = Project.objects.get(name="BUSI")
    assert (project.classes, project.healthy_class) == (["normal", "lesion"], "normal")
    images = {i.original_name: i for i in project.images.all()}
    assert {name: i.label for name, i in images.items()} == {
        "benign_1.png": "lesion", "malignant_1.png": "lesion", "normal_1.png": "normal"}
    with PILImage.open(images["malignant_1.png"].reference_mask.path) as picture:
        reference = np.asarray(picture)
    expected = box_mask((64, 48), (10, 10, 20, 20)) | box_mask((64, 48), (30, 5, 40, 9))
    assert np.array_equal(reference, expected.astype(np.uint8) * 255)
    assert not images["normal_1.png"].reference_mask and not Mask.objects.exists()
    job = Job.objects.get()
    assert (job.imported, job.status, len(callbacks)) == (3, "queued", 1)  # the ensemble is queued once

    with django_capture_on_commit_callbacks() as callbacks:
        out = run(busi_like, "--project", "BUSI", "--labels", busi_like / "manifest.csv",
                  "--label-map", "benign=lesion,malignant=lesion")  # masks/ inside the folder are found by name
    assert "0 new images, 0 reference masks added, 3 already imported, 0 problems" in out
    assert (Image.objects.count(), len(callbacks)) == (3, 0)


def test_the_demo_folder_imports_with_its_reference_masks(db):
    out = run(DEMO_BUSI, "--project", "demo", "--create", "--classes", "normal,lesion")
    labels = list(csv.DictReader((DEMO_BUSI / "images" / "labels.csv").open()))
    masks = list((DEMO_BUSI / "masks").glob("*.png"))
    assert f"{len(labels)} new images, {len(masks)} reference masks added, 0 already imported, 0 problems" in out
    image = Image.objects.get(original_name=masks[0].name)
    with PILImage.open(masks[0]) as given, PILImage.open(image.reference_mask.path) as stored:
        assert np.array_equal(np.asarray(given) > 0, np.asarray(stored) > 0)


def test_a_zip_and_images_in_subfolders_with_bad_files_named(tmp_path, team):
    archive = tmp_path / "scans.zip"
    archive.write_bytes(zip_of({"a/one.png": png_bytes(value=1), "b/c/two.dcm": dicom_bytes(np.eye(4, dtype=np.uint16)),
                                "b/broken.png": b"not a picture"}, {"one.png": "tumour"}).getvalue())
    out = run(archive, "--project", team.project.name)
    assert "2 new images, 0 reference masks added, 0 already imported, 2 problems" in out
    assert "b/broken.png: not an image" in out and "labels.csv: label 'tumour' is not one of" in out


def test_labels_beside_a_folder_replace_the_labels_csv_inside_it(tmp_path, team):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "x.png").write_bytes(png_bytes(value=3))
    (folder / "labels.csv").write_text("filename,label\nx.png,normal\n")
    given = tmp_path / "corrected.csv"
    given.write_text("filename,label\nx.png,lesion\n")
    out = run(folder, "--project", team.project.name, "--labels", given)
    assert "labels.csv: not used: labels come from corrected.csv" in out
    assert Image.objects.get().label == "lesion"


def test_bad_arguments_stop_before_anything_is_stored(tmp_path, team):
    (tmp_path / "x.png").write_bytes(png_bytes())
    with pytest.raises(CommandError, match="no project named 'New'; add --create"):
        run(tmp_path, "--project", "New")
    with pytest.raises(CommandError, match="give at least two distinct classes"):
        run(tmp_path, "--project", "New", "--create", "--classes", "normal")
    with pytest.raises(CommandError, match="FROM=TO pairs"):
        run(tmp_path, "--project", team.project.name, "--label-map", "benign")
    with pytest.raises(CommandError, match="is not a folder"):
        run(tmp_path / "missing", "--project", team.project.name)
    with pytest.raises(CommandError, match="missing.csv is not a file"):
        run(tmp_path, "--project", team.project.name, "--labels", tmp_path / "missing.csv")
    assert (Image.objects.count(), Job.objects.count(), Project.objects.filter(name="New").exists()) == (0, 0, False)


def test_a_real_busi_sample_keeps_its_ground_truth(tmp_path, team):
    """Four real BUSI images with their masks from the shared data set, laid out as it is."""
    shared = SHARED_BUSI
    if not shared.is_dir():
        pytest.skip("the shared BUSI data set is not here")
    rows = [row for row in csv.DictReader((shared / "manifest.csv").open()) if row["label"] != "normal"][:4]
    for row in rows:
        for name in (row["filename"], row["mask_path"]):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared / name, tmp_path / name)
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    out = run(tmp_path, "--project", team.project.name, "--labels", tmp_path / "manifest.csv",
              "--label-map", "benign=lesion,malignant=lesion")
    assert "4 new images, 4 reference masks added, 0 already imported, 0 problems" in out
    for row in rows:
        image = Image.objects.get(original_name=row["filename"].rsplit("/", 1)[1])
        with PILImage.open(shared / row["mask_path"]) as given, PILImage.open(image.reference_mask.path) as stored:
            assert np.array_equal(np.asarray(given) > 0, np.asarray(stored) == 255)
        assert image.label == "lesion"
