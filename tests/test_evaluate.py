"""`python -m ml evaluate` and `tune`: labels, rows, the summary table, runs on demo images, a CLI that starts light."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.__main__ import main
from ml.config import EnsembleManifest
from ml.evaluate import (CONSENSUS, ENSEMBLE, MEMBER, PAPER, ImageScore, UnknownLabelError, label_classes,
                         metrics_summarize, rows_read)

ROOT = Path(__file__).resolve().parent.parent
DEMO_BUSI = ROOT / "demo" / "busi"
DEMO_ENSEMBLE = ROOT / "demo" / "ensemble"
MANIFEST = EnsembleManifest(architectures=["a", "b"], classes=["normal", "lesion"], healthy_class="normal",
                            label_map={"benign": "lesion", "malignant": "lesion"})


# --- Labels, rows and aggregation ---------------------------------------------------------------------------------


def test_labels_map_through_the_label_map_and_unknown_labels_are_named():
    assert label_classes(MANIFEST, ["normal", "benign", "malignant", "lesion"]) == {
        "normal": 0, "benign": 1, "malignant": 1, "lesion": 1}
    with pytest.raises(UnknownLabelError, match=r"\['cyst', 'tb'\]"):
        label_classes(MANIFEST, ["normal", "tb", "cyst"])


def test_limit_spreads_rows_over_a_manifest_sorted_by_label(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("filename,label\n" + "".join(f"{i}.png,{'ab'[i // 5]}\n" for i in range(10)))

    rows = rows_read(manifest, limit=4)

    assert [row["filename"] for row in rows] == ["0.png", "3.png", "6.png", "9.png"]
    assert len(rows_read(manifest)) == len(rows_read(manifest, limit=50)) == 10


def _score(truth, ensemble_lesion, flagged, iou=None, pointing=None):
    probabilities = {name: [1 - ensemble_lesion, ensemble_lesion] for name in (ENSEMBLE, "a", "b")}
    masks = {name: iou for name in (ENSEMBLE, PAPER, CONSENSUS, "a", "b")} if iou is not None else {}
    return ImageScore(truth=truth, probabilities=probabilities, uncertainty=0.0, flagged=flagged,
                      diagnosed_diseased=ensemble_lesion > 0.5, mask_iou=masks, mask_dice=dict(masks),
                      pointing={name: pointing for name in (ENSEMBLE, "a", "b")} if pointing is not None else {})


def test_summary_scores_masks_only_where_given_and_splits_accuracy_by_flag():
    scores = [
        _score(truth=0, ensemble_lesion=0.2, flagged=False),  # right
        _score(truth=0, ensemble_lesion=0.7, flagged=True),  # wrong
        _score(truth=1, ensemble_lesion=0.9, flagged=False, iou=0.6, pointing=True),  # right
        _score(truth=1, ensemble_lesion=0.4, flagged=True, iou=0.0, pointing=False),  # wrong, diagnosed healthy
    ]

    metrics = metrics_summarize(scores, ["a", "b"], healthy=0)

    ensemble = metrics[ENSEMBLE]
    assert ensemble["accuracy"] == pytest.approx(0.5)
    assert ensemble["auroc"] == pytest.approx(0.75)
    assert ensemble["iou"] == pytest.approx(0.3)
    assert ensemble["iou_diagnosed_diseased"] == pytest.approx(0.6)
    assert ensemble["pointing"] == pytest.approx(0.5)
    assert ensemble["flagged_share"] == pytest.approx(0.5)
    assert ensemble["accuracy_unflagged"] == pytest.approx(1.0)
    assert ensemble["accuracy_flagged"] == pytest.approx(0.0)
    assert metrics["counts"] == {"images": 4, "images_with_mask": 2, "images_with_mask_diagnosed_diseased": 1,
                                 "images_with_boxes": 2, "flagged": 2}
    assert set(metrics["models"]) == {"a", "b"}
    assert "flagged_share" not in metrics["models"]["a"]


# --- The command on demo images -----------------------------------------------------------------------------------


def _demo_rows(per_class: int) -> list[dict]:
    with (DEMO_BUSI / "images" / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    normal = [row for row in rows if row["label"] == "normal"][:per_class]
    lesion = [row for row in rows if row["label"] == "lesion"][:per_class]
    return normal + lesion


def _bounding_box(mask_path: Path) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(np.asarray(Image.open(mask_path)) > 127)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def test_evaluate_command_on_demo_images_writes_the_table_and_plots(tmp_path, capsys):
    rows = _demo_rows(per_class=3)
    manifest, boxes = tmp_path / "manifest.csv", tmp_path / "boxes.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "mask_path"])
        for row in rows:  # absolute paths stay themselves beside the manifest's folder
            writer.writerow([DEMO_BUSI / "images" / row["filename"], row["busi_class"],
                             DEMO_BUSI / "masks" / row["filename"]])
    with boxes.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "box_class", "x1", "y1", "x2", "y2"])
        for row in rows[3:]:
            writer.writerow([DEMO_BUSI / "images" / row["filename"], "lesion",
                             *_bounding_box(DEMO_BUSI / "masks" / row["filename"])])
    out = tmp_path / "out"

    main(["evaluate", "--model", str(DEMO_ENSEMBLE), "--data", str(manifest), "--out", str(out),
          "--boxes", str(boxes), "--samples", "3"])

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mc_samples"] == 3
    counts = metrics["counts"]
    assert (counts["images"], counts["images_with_mask"], counts["images_with_boxes"]) == (6, 3, 3)
    panel = json.loads((DEMO_ENSEMBLE / "manifest.json").read_text())["architectures"]
    assert sorted(metrics["models"]) == sorted(panel) and len(panel) == 3
    for row in [metrics[ENSEMBLE], *metrics["models"].values()]:
        for key in ("accuracy", "balanced_accuracy", "auroc", "ece", "iou", "dice", "pointing"):
            assert 0.0 <= row[key] <= 1.0, key
        assert round(row["accuracy"] * 6, 6) == round(row["accuracy"] * 6)  # a share of six images
    ensemble = metrics[ENSEMBLE]
    assert ensemble["flagged_share"] == pytest.approx(counts["flagged"] / 6)
    assert 0.0 <= ensemble["box_iou"] <= 1.0
    table_lines = [line for line in (out / "metrics.md").read_text().splitlines() if line.startswith("| ")]
    # header, the proposal, the refined consensus, the demo's segmentation member, the paper's intersection, and
    # three models
    assert [line.split("|")[1].strip() for line in table_lines[:5]] == [
        "Model", "Ensemble (proposed mask)", "Consensus, refined", "Segmentation member", "Paper's intersection"]
    assert len(table_lines) == 8 and "| Box IoU |" in table_lines[0]
    for name in (PAPER, CONSENSUS, MEMBER):
        assert 0.0 <= metrics[name]["iou"] <= 1.0 and "accuracy" not in metrics[name]  # a mask, not a classifier
    proposed = MEMBER if json.loads((DEMO_ENSEMBLE / "manifest.json").read_text())["annotate"]["proposal"] == \
        "segmentation" else CONSENSUS
    assert metrics[ENSEMBLE]["iou"] == metrics[proposed]["iou"]
    assert "| Ensemble (proposed mask) |" in capsys.readouterr().out
    for plot in ("reliability.png", "uncertainty.png", "overlays.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and min(image.size) > 100


def recipe_rows(out: str) -> list[dict]:
    """The rows of `tune`'s table."""
    lines = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    names = ["refine", "flip_maps", "binarization", "consensus", "iou"]
    return [dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[1:]]


def test_tune_command_chooses_the_mask_recipe_on_lesion_masks_and_writes_it_into_the_manifest(tmp_path, capsys):
    model = tmp_path / "ensemble"
    shutil.copytree(DEMO_ENSEMBLE, model)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "mask_path"])
        for row in _demo_rows(per_class=6):
            writer.writerow([DEMO_BUSI / "images" / row["filename"], row["busi_class"],
                             DEMO_BUSI / "masks" / row["filename"]])

    main(["tune", "--model", str(model), "--data", str(manifest), "--write"])

    out = capsys.readouterr().out
    assert out.startswith("| Refinement | Mirrored maps | Binarisation | Consensus | Mean IoU |") and "Chosen: " in out
    assert "| none (the paper's) |" in out
    written = EnsembleManifest.from_dict(json.loads((model / "manifest.json").read_text()))
    recipe = written.metrics["mask_recipe"]
    chosen = written.annotate
    assert (chosen.binarize, chosen.consensus, chosen.refine, chosen.flip_maps) == (
        recipe["binarize"], recipe["consensus"], recipe["refine"], recipe["flip_maps"])
    assert {row["flip_maps"] for row in recipe_rows(out)} == {"yes", "no"}  # both kinds of maps were tried
    assert 0.0 <= recipe["paper_iou"] <= recipe["proposal_iou"] <= 1.0 and recipe["images"] >= 1
    flags = written.metrics["flags"]
    assert chosen.uncertainty_threshold == flags["uncertainty_threshold"] and flags["images"] == 12
    assert flags["accuracy_unflagged"] is None or flags["accuracy_unflagged"] >= 0.97
    assert f"flags {100 * flags['flagged_share']:.1f} % of the 12 images" in out
    assert json.loads((DEMO_ENSEMBLE / "manifest.json").read_text()) != json.loads(
        (model / "manifest.json").read_text()), "the copy was written, not the demo's own"


def test_evaluate_command_names_labels_that_map_to_no_class(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"filename,label\n{DEMO_BUSI / 'images' / _demo_rows(1)[0]['filename']},tb\n")

    with pytest.raises(SystemExit, match="'tb'"):
        main(["evaluate", "--model", str(DEMO_ENSEMBLE), "--data", str(manifest), "--out", str(tmp_path / "out")])


# --- Starting light -----------------------------------------------------------------------------------------------


def test_the_command_line_imports_no_torch_until_a_command_needs_it():
    check = "import ml.__main__, sys; assert 'torch' not in sys.modules, 'torch imported'"

    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True)


def test_split_command_runs_without_torch(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("filename,label\n" + "".join(
        f"{DEMO_BUSI / 'images' / row['filename']},{row['label']}\n" for row in _demo_rows(per_class=3)))
    check = ("import sys; from ml.__main__ import main; main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules, 'torch imported'")

    subprocess.run([sys.executable, "-c", check, "split", "--data", str(manifest), "--out", str(tmp_path / "out")],
                   cwd=ROOT, check=True)

    train, test = ((tmp_path / "out" / name).read_text().splitlines()[1:] for name in ("train.csv", "test.csv"))
    assert len(train) + len(test) == 6 and test
