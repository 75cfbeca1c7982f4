"""Exports: COCO with RLE (exact) or polygons (close), the dataset zip, their filters, and the round trips back in."""
import csv
import io
import json
import zipfile
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools.coco import COCO

from annotator.models import Image, Mask, Project
from annotator.ingest.archive import zip_entries
from annotator.ingest.services import upload_ingest
from annotator.masks.services import mask_array, mask_create
from annotator.tallies import image_tally_add
from review import services as review_services
from tests.factories import annotated_image

SIZES = [(64, 64), (97, 131), (256, 180), (200, 256), (150, 90), (256, 256)]


def lesion_blob(size, seed) -> np.ndarray:
    """A lesion-like mask: one to three lobed ellipses, as wide as a tenth to a half of the image."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        ry, rx = rng.uniform(0.06, 0.25) * height, rng.uniform(0.06, 0.25) * width
        angle = np.arctan2(ys - cy, xs - cx)
        lobes = 1 + 0.2 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, np.pi))
        mask |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < lobes ** 2
    return mask


def drawn(team, name, mask, size):
    """An annotated image whose radiologist drew `mask` over the model's as version 2."""
    image = annotated_image(team.project, name, size=size)
    mask_create(image, mask, Mask.Source.HUMAN, author=team.radiologist, parent=image.masks.get())
    return image


def approved(team, name, mask, size, label=""):
    image = drawn(team, name, mask, size)
    return review_services.image_approve(image, team.radiologist, label=label)


def export_get(team, kind, **params):
    response = team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/{kind}/", params)
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def coco_get(team, tmp_path, **params) -> COCO:
    path = tmp_path / "coco.json"
    path.write_bytes(export_get(team, "coco", **params))
    return COCO(str(path))


def test_coco_rle_decodes_to_the_approved_masks_exactly_with_their_attributes(team, tmp_path):
    images = [approved(team, f"scan{i}.png", lesion_blob(size, i), size) for i, size in enumerate(SIZES)]
    corrected = approved(team, "corrected.png", lesion_blob((120, 100), 99), (120, 100), label="normal")
    empty = approved(team, "healthy.png", np.zeros((50, 40), dtype=bool), (40, 50))

    coco = coco_get(team, tmp_path)
    assert coco.dataset["categories"] == [{"id": 1, "name": "normal", "supercategory": "diagnosis"},
                                          {"id": 2, "name": "lesion", "supercategory": "diagnosis"}]
    assert sorted(coco.getImgIds()) == sorted(i.pk for i in images + [corrected, empty])
    assert coco.getAnnIds(imgIds=[empty.pk]) == []  # nothing to outline on an empty mask
    for image in images + [corrected]:
        image.refresh_from_db()
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[image.pk]))
        stored = mask_array(image.approved_mask)
        assert np.array_equal(coco.annToMask(annotation).astype(bool), stored)
        assert annotation["area"] == stored.sum()
        assert annotation["attributes"] == {
            "label": image.reviewed_label or "lesion", "label_source": "reviewed" if image.reviewed_label else
            "predicted", "review_status": "approved", "mask_version": 2, "source": "human",
            "model_version": "test@0", "uncertainty": 0.3, "reviewer": "radiologist",
            "approved_at": image.reviewed_at.isoformat()}
    # The radiologist's diagnosis, not the ensemble's, decides the category.
    assert coco.loadAnns(coco.getAnnIds(imgIds=[corrected.pk]))[0]["category_id"] == 1
    assert {coco.loadAnns(coco.getAnnIds(imgIds=[i.pk]))[0]["category_id"] for i in images} == {2}


def test_coco_polygons_cover_realistic_lesion_masks_closely(team, tmp_path):
    images = [approved(team, f"scan{i}.png", lesion_blob(size, 10 + i), size) for i, size in enumerate(SIZES * 2)]
    coco = coco_get(team, tmp_path, format="polygon")
    assert coco.dataset["info"]["segmentation"] == "polygon"
    for image in images:
        image.refresh_from_db()
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[image.pk]))
        assert isinstance(annotation["segmentation"], list)
        assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in annotation["segmentation"])
        stored = mask_array(image.approved_mask)
        decoded = coco.annToMask(annotation).astype(bool)
        iou = (decoded & stored).sum() / (decoded | stored).sum()
        assert iou >= 0.9, (image.original_name, iou)
        assert annotation["area"] == stored.sum()  # area and bbox are the exact mask's


def ring(size, inner, outer) -> np.ndarray:
    """A ring around the image's centre: what polygons, read as a union by COCO tools, cannot draw."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    radius = np.hypot(ys - height / 2, xs - width / 2)
    return (radius >= inner) & (radius < outer)


def test_coco_polygons_keep_the_hole_of_a_ring(team, tmp_path):
    size = (120, 100)
    holed = [approved(team, "ring.png", ring(size, 20, 40), size),
             approved(team, "pinhole.png", ring(size, 1.5, 30), size)]  # a hole of a few pixels
    solid = approved(team, "solid.png", lesion_blob(size, 1), size)
    coco = coco_get(team, tmp_path, format="polygon")
    for image in holed + [solid]:
        image.refresh_from_db()
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[image.pk]))
        stored = mask_array(image.approved_mask)
        decoded = coco.annToMask(annotation).astype(bool)
        assert (decoded & stored).sum() / (decoded | stored).sum() >= 0.96, image.original_name
        assert not decoded[stored.shape[0] // 2, stored.shape[1] // 2] or image == solid  # the hole stays a hole
    (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[solid.pk]))
    assert isinstance(annotation["segmentation"], list)  # a mask without a hole stays polygons


def test_pending_exports_the_latest_version_and_rejected_exports_images_without_masks(team, tmp_path):
    waiting = drawn(team, "waiting.png", lesion_blob((80, 60), 1), (80, 60))
    unannotated = Image.objects.create(project=team.project, sha256="0" * 64, file=waiting.file.name,
                                       original_name="new.png", width=80, height=60)
    image_tally_add(unannotated)
    refused = drawn(team, "refused.png", lesion_blob((80, 60), 2), (80, 60))
    review_services.image_reject(refused, team.radiologist, label="normal")
    approved(team, "done.png", lesion_blob((80, 60), 3), (80, 60))

    pending = coco_get(team, tmp_path, status="pending")
    assert sorted(pending.getImgIds()) == [waiting.pk, unannotated.pk]
    (annotation,) = pending.loadAnns(pending.getAnnIds())
    assert annotation["image_id"] == waiting.pk
    assert np.array_equal(pending.annToMask(annotation).astype(bool), mask_array(waiting.masks.get(version=2)))
    assert {k: annotation["attributes"][k] for k in ("review_status", "mask_version", "reviewer", "approved_at")} \
        == {"review_status": "pending", "mask_version": 2, "reviewer": None, "approved_at": None}

    rejected = coco_get(team, tmp_path, status="rejected")
    assert rejected.getImgIds() == [refused.pk] and rejected.getAnnIds() == []
    assert rejected.loadImgs([refused.pk])[0]["label"] == "normal"
    archive = zipfile.ZipFile(io.BytesIO(export_get(team, "png", status="rejected")))
    assert sorted(archive.namelist()) == ["images/refused.png", "index.json", "labels.csv"]
    assert json.loads(archive.read("index.json"))["images"][0]["mask"] is None


def test_label_and_review_date_filters(team, tmp_path):
    lesion = approved(team, "lesion.png", lesion_blob((64, 64), 1), (64, 64))
    relabelled = approved(team, "relabelled.png", lesion_blob((64, 64), 2), (64, 64), label="normal")
    uploaded = drawn(team, "uploaded.png", lesion_blob((64, 64), 3), (64, 64))
    Image.objects.filter(pk=uploaded.pk).update(label="normal")  # given with the upload; the ensemble said lesion
    review_services.image_approve(uploaded, team.radiologist)
    days = {lesion: datetime(2025, 3, 1, 12, tzinfo=timezone.utc), relabelled: datetime(2025, 3, 2, 23, 59,
            tzinfo=timezone.utc), uploaded: datetime(2025, 3, 3, 0, 0, tzinfo=timezone.utc)}
    for image, day in days.items():
        Image.objects.filter(pk=image.pk).update(reviewed_at=day)

    def exported(**params):
        return sorted(coco_get(team, tmp_path, **params).getImgIds())

    assert exported(label="normal") == [relabelled.pk, uploaded.pk]
    assert exported(label="lesion") == [lesion.pk]
    assert exported(reviewed_from="2025-03-02") == [relabelled.pk, uploaded.pk]
    assert exported(reviewed_to="2025-03-02") == [lesion.pk, relabelled.pk]  # the whole last day counts
    assert exported(reviewed_from="2025-03-02", reviewed_to="2025-03-02", label="normal") == [relabelled.pk]
    sources = {a["image_id"]: a["attributes"]["label_source"]
               for a in coco_get(team, tmp_path).dataset["annotations"]}
    assert sources == {lesion.pk: "predicted", relabelled.pk: "reviewed", uploaded.pk: "upload"}


@pytest.mark.parametrize("value", ["20260105", "2026-W02-1", "2026-1-5", "2026-01-05T00:00", "٢٠٢٦-٠١-٠٥"])
def test_review_dates_other_than_yyyy_mm_dd_are_refused_by_name(team, value):
    for name in ("reviewed_from", "reviewed_to"):
        response = team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/coco/", {name: value})
        assert response.status_code == 400 and set(response.json()) == {name}, value


def test_a_review_date_range_that_ends_before_it_starts_is_refused(team):
    approved(team, "a.png", lesion_blob((64, 64), 1), (64, 64))
    dates = {"reviewed_from": "2026-01-06", "reviewed_to": "2026-01-05"}
    for kind in ("coco", "png"):
        response = team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/{kind}/", dates)
        assert response.status_code == 400 and "reviewed_to" in response.json()["reviewed_from"]
    page = team.client(team.admin)
    response = page.get(f"/projects/{team.project.pk}/export/coco.json", dates)
    assert response.status_code == 302 and "is after reviewed_to" in page.get(response.url).content.decode()
    one_day = {"reviewed_from": "2026-01-05", "reviewed_to": "2026-01-05"}
    assert team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/coco/", one_day).status_code == 200


def test_bad_options_are_refused_by_name(team):
    approved(team, "a.png", lesion_blob((64, 64), 1), (64, 64))
    response = team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/coco/",
                                        {"status": "maybe", "label": "benign", "reviewed_from": "yesterday",
                                         "format": "svg"})
    assert response.status_code == 400
    assert set(response.json()) == {"status", "label", "reviewed_from", "format"}
    response = team.api(team.admin).get(f"/api/projects/{team.project.pk}/export/png/", {"values": "rgb"})
    assert response.status_code == 400 and "values" in response.json()
    page = team.client(team.admin)
    response = page.get(f"/projects/{team.project.pk}/export/masks.zip", {"values": "rgb"})
    assert response.status_code == 302 and response.url == f"/projects/{team.project.pk}/"
    assert "values: one of binary, index" in page.get(response.url).content.decode()


def test_dataset_zip_holds_the_original_images_their_masks_labels_and_an_index(team):
    first = approved(team, "scan.png", lesion_blob((90, 70), 1), (90, 70))
    namesake = approved(team, "scan.png", lesion_blob((91, 70), 2), (91, 70), label="normal")  # another study's
    tricky = approved(team, "left_mask.png", lesion_blob((90, 70), 3), (90, 70))
    archive = zipfile.ZipFile(io.BytesIO(export_get(team, "png")))
    renamed, tricky_name = f"scan-{namesake.pk}", f"left_mask-{tricky.pk}"
    assert sorted(archive.namelist()) == sorted(
        ["index.json", "labels.csv", "images/scan.png", f"images/{renamed}.png", f"images/{tricky_name}.png",
         "masks/scan.png", f"masks/{renamed}.png", f"masks/{tricky_name}.png"])
    assert archive.read("labels.csv").decode().splitlines() == [
        "filename,label", "scan.png,lesion", f"{renamed}.png,normal", f"{tricky_name}.png,lesion"]
    index = json.loads(archive.read("index.json"))
    assert (index["values"], index["legend"]) == ("binary", {"background": 0, "foreground": 255})
    for image, entry in zip([first, namesake, tricky], index["images"]):
        image.refresh_from_db()
        assert entry["image_id"] == image.pk and entry["mask_version"] == 2
        with image.file.open("rb") as original:
            assert archive.read(entry["file_name"]) == original.read()
        mask = np.asarray(PILImage.open(io.BytesIO(archive.read(entry["mask"]))))
        assert set(np.unique(mask)) == {0, 255}
        assert np.array_equal(mask > 0, mask_array(image.approved_mask))


def test_labels_csv_quotes_file_names_a_spreadsheet_would_run_as_formulas_and_imports_them_again(team, tmp_path):
    # A tab or a CR: see the next test.
    formulas = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(A1).png", "'=quoted.png"]
    for i, name in enumerate(formulas + ["plain.png"]):  # sizes differ: the import would take one file once only
        approved(team, name, lesion_blob((64 + i, 64), i), (64 + i, 64), label="normal")
    path = tmp_path / "dataset.zip"
    path.write_bytes(export_get(team, "png"))
    rows = list(csv.reader(io.StringIO(zipfile.ZipFile(path).read("labels.csv").decode(), newline="")))
    assert rows[1:] == [[f"'{name}", "normal"] for name in formulas] + [["plain.png", "normal"]]

    copy = Project.objects.create(name="Copy", classes=["normal", "lesion"], healthy_class="normal")
    job = upload_ingest(copy, zip_entries(path), "dataset.zip")
    assert (job.imported, job.errors) == (len(formulas) + 1, [])
    assert {image.original_name: image.label for image in copy.images.all()} == dict.fromkeys(
        formulas + ["plain.png"], "normal")


def test_names_stored_before_the_name_rule_export_with_underscores_and_import_again(team, tmp_path):
    stored = ["new\nline.png", "evil\u202egnp.png", "\tTab.png", "\rReturn.png", "zero\u200bwidth.png"]
    cleaned = ["new_line.png", "evil_gnp.png", "_Tab.png", "_Return.png", "zero_width.png"]
    for i, name in enumerate(stored):  # made directly, as the import took them before it had the rule
        approved(team, name, lesion_blob((64 + i, 64), i), (64 + i, 64), label="normal")
    assert [image["file_name"] for image in coco_get(team, tmp_path).dataset["images"]] == cleaned
    path = tmp_path / "dataset.zip"
    path.write_bytes(export_get(team, "png"))
    archive = zipfile.ZipFile(path)
    assert sorted(archive.namelist()) == sorted(["index.json", "labels.csv", *(f"images/{n}" for n in cleaned),
                                                 *(f"masks/{n}" for n in cleaned)])
    assert [entry["original_name"] for entry in json.loads(archive.read("index.json"))["images"]] == stored
    assert sorted(team.project.images.values_list("original_name", flat=True)) == sorted(stored)  # kept as they were

    copy = Project.objects.create(name="Copy", classes=["normal", "lesion"], healthy_class="normal")
    job = upload_ingest(copy, zip_entries(path), "dataset.zip")
    assert (job.imported, job.errors) == (len(stored), [])
    assert sorted(copy.images.exclude(reference_mask="").values_list("original_name", flat=True)) == sorted(cleaned)


def test_index_values_mark_each_mask_with_its_class(team):
    lesion = approved(team, "lesion.png", lesion_blob((64, 64), 1), (64, 64))
    normal = approved(team, "normal.png", lesion_blob((64, 64), 2), (64, 64), label="normal")
    archive = zipfile.ZipFile(io.BytesIO(export_get(team, "png", values="index")))
    index = json.loads(archive.read("index.json"))
    assert (index["values"], index["legend"]) == ("index", {"background": 0, "classes": {"normal": 1, "lesion": 2}})
    for image, value in ((lesion, 2), (normal, 1)):
        image.refresh_from_db()
        mask = np.asarray(PILImage.open(io.BytesIO(archive.read(f"masks/{image.original_name}"))))
        stored = mask_array(image.approved_mask)
        assert np.all(mask[stored] == value) and np.all(mask[~stored] == 0)


def test_an_empty_project_exports_empty_but_valid_files(team, tmp_path):
    coco = coco_get(team, tmp_path)
    assert (coco.dataset["images"], coco.dataset["annotations"]) == ([], [])
    archive = zipfile.ZipFile(io.BytesIO(export_get(team, "png")))
    assert json.loads(archive.read("index.json"))["images"] == []
    assert archive.read("labels.csv").decode().splitlines() == ["filename,label"]


def test_the_project_page_offers_the_export_form_to_admins_only(team):
    page = team.client(team.admin).get(f"/projects/{team.project.pk}/").content.decode()
    assert f'action="/projects/{team.project.pk}/export/coco.json"' in page
    assert f'formaction="/projects/{team.project.pk}/export/masks.zip"' in page
    for name in ("status", "label", "reviewed_from", "reviewed_to", "format", "values"):
        assert f'name="{name}"' in page
    radiologist_page = team.client(team.radiologist).get(f"/projects/{team.project.pk}/").content.decode()
    assert 'name="reviewed_from"' not in radiologist_page


def test_the_page_export_takes_the_same_options(team, tmp_path):
    image = approved(team, "a.png", lesion_blob((64, 64), 1), (64, 64))
    response = team.client(team.admin).get(f"/projects/{team.project.pk}/export/coco.json", {"format": "polygon"})
    assert response["Content-Disposition"] == 'attachment; filename="BUSI-approved-coco.json"'
    (annotation,) = json.loads(b"".join(response.streaming_content))["annotations"]
    assert annotation["image_id"] == image.pk and isinstance(annotation["segmentation"], list)


@pytest.mark.parametrize("values", ["binary", "index"])
def test_the_dataset_zip_imports_into_a_new_project_with_the_same_masks_and_labels(team, tmp_path, values):
    sources = [approved(team, f"scan{i}.png", lesion_blob(size, 20 + i), size, label=["lesion", "normal"][i % 2])
               for i, size in enumerate(SIZES)]
    sources.append(approved(team, "healthy.png", np.zeros((50, 40), dtype=bool), (40, 50), label="normal"))
    path = tmp_path / "dataset.zip"
    path.write_bytes(export_get(team, "png", values=values))
    exported = json.loads(zipfile.ZipFile(path).read("index.json"))["images"]

    copy = Project.objects.create(name="Copy", classes=["normal", "lesion"], healthy_class="normal")
    job = upload_ingest(copy, zip_entries(path), "dataset.zip")
    assert job.imported == len(sources)
    assert job.errors == []  # index.json is recognised as our own and skipped
    imported = {image.original_name: image for image in copy.images.all()}
    for source, entry in zip(sources, exported):
        source.refresh_from_db()
        image = imported[entry["file_name"].removeprefix("images/")]
        assert image.label == source.reviewed_label
        with image.file.open("rb") as copied, source.file.open("rb") as original:
            assert copied.read() == original.read()
        with image.reference_mask.open("rb") as f:
            reference = np.asarray(PILImage.open(f))
        assert set(np.unique(reference)) <= {0, 255}
        assert np.array_equal(reference > 0, mask_array(source.approved_mask))


def test_a_dicom_upload_exports_as_the_png_it_became_and_imports_again(team, tmp_path):
    from annotator.export.dataset_zip import dataset_zip_write
    from annotator.export.options import export_options_parse
    from tests.conftest import dicom_bytes, zip_of

    upload_ingest(team.project, zip_entries(zip_of({"scan.dcm": dicom_bytes(
        np.arange(64, dtype=np.uint16).reshape(8, 8) * 100)})), "dicom.zip")
    path = tmp_path / "dataset.zip"
    with path.open("wb") as target:
        dataset_zip_write(team.project, export_options_parse({"status": "pending"}, team.project), target)
    stored = team.project.images.get()
    assert stored.original_name == f"dicom-{stored.sha256[:12]}.png"  # the upload's file name is not kept
    assert f"images/{stored.original_name}" in zipfile.ZipFile(path).namelist()

    copy = Project.objects.create(name="Copy", classes=["normal", "lesion"], healthy_class="normal")
    job = upload_ingest(copy, zip_entries(path), "dataset.zip")
    assert (job.imported, job.errors) == (1, [])
    assert copy.images.get().sha256 == team.project.images.get().sha256
