"""Scale benchmark: ingest of 5 000 generated images, export of their 5 000 approved masks, against baselines.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.scale [--images 5000]

It runs in a database of its own, made by Django's test-database machinery (`annotator_bench_scale` on the server of
DATABASE_URL, or a temporary SQLite file without one), migrated at the start and dropped at the end, with its media
in a temporary folder and the annotation jobs that ingest queues sent to an in-memory broker nobody reads: no other
data is touched. It generates grayscale PNGs of 64 to 256 pixels a side into a zip with a labels.csv, ingests them
through `annotator.ingest`, gives each a lesion-like mask and approves it, then exports them.

Each figure is measured against a baseline in the same run:
- **ingest**: the same zip import of a tenth of the images (other images, into another project): images/s and
  memory at 10x the size show whether the import scales linearly.
- **COCO RLE**: the export as it was before it streamed (`_coco_in_memory`: the whole COCO dict, then one
  `json.dumps`), on the same images; the streamed export also on a tenth of them, to show how little its memory
  grows with the number of masks.
- **dataset zip**: the same zip built the in-memory way (`_dataset_zip_in_memory`: a BytesIO, index and labels as
  lists), likewise.
Seconds and images/s come from a pass without tracing, with the growth of the process's peak RSS over that pass
(its high-water mark reset through /proc/self/clear_refs); an export's tracemalloc peak from a second, traced pass.
Not a test: the figures depend on the machine; the ratios are measured in the same run.
"""
import argparse
import csv
import gc
import io
import json
import os
import shutil
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

TEST_DATABASE = "annotator_bench_scale"
SMALL_FRACTION = 10


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # Before Django reads its settings: media of our own, and the annotation jobs of ingest go nowhere.
    os.environ.update(MEDIA_ROOT=str(work / "media"), CELERY_BROKER_URL="memory://localhost/",
                      CELERY_TASK_ALWAYS_EAGER="0", LOG_LEVEL="WARNING", DJANGO_SETTINGS_MODULE="config.settings")
    import django

    django.setup()
    from django.db import connection

    test_name = TEST_DATABASE if connection.vendor == "postgresql" else str(work / "bench.sqlite3")
    connection.settings_dict["TEST"] = {**connection.settings_dict.get("TEST", {}), "NAME": test_name}
    real_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        rows, ratios = _run(args.images, args.images // SMALL_FRACTION, work, np.random.default_rng(args.seed))
        database = f"PostgreSQL {connection.pg_version // 10000}" if connection.vendor == "postgresql" else "SQLite"
    finally:
        connection.creation.destroy_test_db(real_name, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)
    _print(rows, ratios, args.images, database)


def _run(count: int, small_count: int, work: Path, rng) -> tuple[list[dict], list[str]]:
    from annotator.export.coco import coco_export_write
    from annotator.export.dataset_zip import dataset_zip_write
    from annotator.export.options import ExportOptions
    from annotator.ingest.archive import zip_entries
    from annotator.ingest.services import upload_ingest
    from annotator.models import Project

    warm_up_zip, small_zip, large_zip = work / "warm-up.zip", work / "small.zip", work / "large.zip"
    _dataset_generate(warm_up_zip, 5, rng, prefix="warm-up")
    _dataset_generate(small_zip, small_count, rng, prefix="small")
    _dataset_generate(large_zip, count, rng, prefix="scan")
    warm_up, small, large = (Project.objects.create(name=f"bench {name}", classes=["normal", "lesion"],
                                                    healthy_class="normal") for name in ("warm-up", "small", "large"))

    rows = {}

    def ingest_zip(project, path):
        job = upload_ingest(project, zip_entries(path), path.name)
        assert not job.errors and job.imported == project.images.count(), job.errors

    ingest_zip(warm_up, warm_up_zip)  # the first upload's one-off costs (imports, the broker connection)
    rows["ingest small"] = _measure(f"ingest, {small_count} images (baseline)", small_count,
                                    lambda: ingest_zip(small, small_zip), traced=False)
    rows["ingest"] = _measure(f"ingest, {count} images", count, lambda: ingest_zip(large, large_zip), traced=False)
    for project in (small, large):
        _masks_approve(project, rng)

    def to_file(write, project, options=ExportOptions()):
        return lambda: _into_temporary_file(lambda target: write(project, options, target))

    def in_memory(build, project):
        return lambda: _into_temporary_file(lambda target: target.write(build(project)))

    rows["coco old"] = _measure("COCO RLE, whole dict in memory (baseline)", count,
                                in_memory(_coco_in_memory, large))
    rows["coco"] = _measure("COCO RLE, streamed", count, to_file(coco_export_write, large))
    rows["coco small"] = _measure(f"COCO RLE, streamed, {small_count} images", small_count,
                                  to_file(coco_export_write, small))
    rows["coco polygon"] = _measure("COCO polygons, streamed", count, to_file(
        coco_export_write, large, ExportOptions(segmentation="polygon")), traced=False)
    rows["zip old"] = _measure("dataset zip, in memory (baseline)", count, in_memory(_dataset_zip_in_memory, large))
    rows["zip"] = _measure("dataset zip, streamed", count, to_file(dataset_zip_write, large))
    rows["zip small"] = _measure(f"dataset zip, streamed, {small_count} images", small_count,
                                 to_file(dataset_zip_write, small))

    def rate(row):
        return row["images"] / row["seconds"]

    ratios = [
        f"ingest: {count} vs {small_count} images: {rate(rows['ingest']) / rate(rows['ingest small']):.2f}x the "
        f"images/s; peak RSS growth {rows['ingest']['rss_mib']:.1f} vs {rows['ingest small']['rss_mib']:.1f} MiB",
    ]
    for kind, name in (("coco", "COCO RLE"), ("zip", "dataset zip")):
        ours, old, few = rows[kind], rows[f"{kind} old"], rows[f"{kind} small"]
        ratios.append(f"{name}: streamed vs in memory: {rate(ours) / rate(old):.2f}x the images/s, "
                      f"{old['traced_mib'] / ours['traced_mib']:.1f}x less tracemalloc peak; streamed, {count} vs "
                      f"{small_count} images: {ours['traced_mib'] / few['traced_mib']:.2f}x the tracemalloc peak")
    return list(rows.values()), ratios


def _dataset_generate(path: Path, count: int, rng, prefix: str) -> None:
    """A zip of `count` distinct grayscale PNGs (a gradient with noise, 64 to 256 pixels a side) and labels.csv."""
    labels = io.StringIO()
    rows = csv.writer(labels)
    rows.writerow(["filename", "label"])
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(count):
            width, height = (int(v) for v in rng.integers(64, 257, size=2))
            ys, xs = np.mgrid[0:height, 0:width]
            pixels = 60 + 100 * (xs / width + ys / height) / 2 + rng.integers(0, 32, size=(height, width))
            buffer = io.BytesIO()
            PILImage.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
            name = f"{prefix}{index:05d}.png"
            archive.writestr(f"images/{name}", buffer.getvalue())
            rows.writerow([name, "lesion" if index % 3 else "normal"])
        archive.writestr("labels.csv", labels.getvalue())


def _masks_approve(project, rng) -> None:
    """A lesion-like ellipse as each image's model mask, approved as it is."""
    from django.db.models import OuterRef, Subquery
    from django.utils import timezone

    from annotator.models import Image, Mask
    from annotator.masks.services import mask_create

    for image in project.images.order_by("id").iterator(chunk_size=500):
        ys, xs = np.mgrid[0:image.height, 0:image.width]
        cy, cx = rng.uniform(0.3, 0.7) * image.height, rng.uniform(0.3, 0.7) * image.width
        ry, rx = rng.uniform(0.08, 0.3) * image.height, rng.uniform(0.08, 0.3) * image.width
        mask_create(image, ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1, Mask.Source.MODEL,
                    model_version="bench")
    project.images.update(review_status=Image.ReviewStatus.APPROVED, reviewed_at=timezone.now(),
                          model_version="bench", predicted_label="lesion", uncertainty=0.5,
                          approved_mask=Subquery(Mask.objects.filter(image=OuterRef("pk")).values("id")[:1]))


def _into_temporary_file(write) -> None:
    with tempfile.TemporaryFile() as target:
        write(target)


def _measure(name: str, images: int, run, traced: bool = True) -> dict:
    """One pass timed, with the peak RSS growth over it; then, if `traced`, one pass under tracemalloc."""
    gc.collect()
    _peak_rss_reset()
    rss_before = _status_kib("VmRSS")
    began = time.perf_counter()
    run()
    seconds = time.perf_counter() - began
    row = {"name": name, "images": images, "seconds": seconds,
           "rss_mib": max(_status_kib("VmHWM") - rss_before, 0) / 1024, "traced_mib": None}
    if traced:
        gc.collect()
        tracemalloc.start()
        run()
        row["traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"  {name}: {seconds:.1f} s", flush=True)
    return row


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _coco_in_memory(project) -> bytes:
    """The COCO export before it streamed: every image and annotation in one dict, dumped at the end."""
    from pycocotools import mask as coco_mask

    from annotator.models import Image
    from annotator.masks.services import mask_array

    categories = [{"id": i + 1, "name": name, "supercategory": "finding"}
                  for i, name in enumerate(project.disease_classes)]
    category_ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    approved = (project.images.filter(review_status=Image.ReviewStatus.APPROVED, approved_mask__isnull=False)
                .select_related("approved_mask", "reviewed_by").order_by("id"))
    for image in approved:
        images.append({"id": image.pk, "file_name": image.original_name, "width": image.width,
                       "height": image.height, "sha256": image.sha256})
        mask = mask_array(image.approved_mask)
        if not mask.any():
            continue
        label = image.label or image.predicted_label
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "id": len(annotations) + 1, "image_id": image.pk,
            "category_id": category_ids.get(label, categories[0]["id"]),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": float(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)], "iscrowd": 0,
            "attributes": {"mask_version": image.approved_mask.version, "source": image.approved_mask.source,
                           "model_version": image.model_version, "uncertainty": image.uncertainty,
                           "reviewer": image.reviewed_by.username if image.reviewed_by else None,
                           "approved_at": image.reviewed_at.isoformat() if image.reviewed_at else None},
        })
    return json.dumps({"info": {"description": f"Approved masks of {project.name}"}, "images": images,
                       "annotations": annotations, "categories": categories}).encode()


def _dataset_zip_in_memory(project) -> bytes:
    """The dataset zip's layout built the naive way: the zip in a BytesIO, every file read whole, the index and the
    labels as lists."""
    from annotator.models import Image

    buffer, index, labels = io.BytesIO(), [], ["filename,label"]
    approved = (project.images.filter(review_status=Image.ReviewStatus.APPROVED, approved_mask__isnull=False)
                .select_related("approved_mask").order_by("id"))
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for image in approved:
            with image.file.open("rb") as picture, image.approved_mask.file.open("rb") as mask:
                archive.writestr(f"images/{image.original_name}", picture.read())
                archive.writestr(f"masks/{Path(image.original_name).stem}.png", mask.read())
            labels.append(f"{image.original_name},{image.label}")
            index.append({"image_id": image.pk, "file_name": f"images/{image.original_name}"})
        archive.writestr("labels.csv", "\n".join(labels))
        archive.writestr("index.json", json.dumps({"images": index}))
    return buffer.getvalue()


def _print(rows: list[dict], ratios: list[str], count: int, database: str) -> None:
    print(f"\n{count} generated grayscale PNGs of 64-256 px a side; {database}; {os.cpu_count()} CPU cores")
    print(f"{'':44} {'images':>6} {'seconds':>8} {'images/s':>9} {'peak RSS +MiB':>13} {'tracemalloc MiB':>15}")
    for row in rows:
        traced = f"{row['traced_mib']:15.1f}" if row["traced_mib"] is not None else f"{'-':>15}"
        print(f"{row['name']:44} {row['images']:6d} {row['seconds']:8.1f} {row['images'] / row['seconds']:9.0f} "
              f"{row['rss_mib']:13.1f} {traced}")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
