"""`python -m ml evaluate`: its metrics against hand-computed and scikit-learn values, and one run on demo images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from ml.__main__ import main
from ml.config import EnsembleManifest
from ml.evaluate import (
    ENSEMBLE,
    ImageScore,
    UnknownLabelError,
    accuracy,
    auroc,
    balanced_accuracy,
    boxes_mask,
    expected_calibration_error,
    label_classes,
    mask_dice,
    mask_iou,
    metrics_summarize,
    pointing_hit,
    reliability_bins,
    rows_read,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_BUSI = ROOT / "demo" / "busi"
DEMO_ENSEMBLE = ROOT / "demo" / "ensemble"
MANIFEST = EnsembleManifest(architectures=["a", "b"], classes=["normal", "lesion"], healthy_class="normal",
                            label_map={"benign": "lesion", "malignant": "lesion"})


# --- Classification -----------------------------------------------------------------------------------------------


def test_accuracy_and_balanced_accuracy_by_hand():
    truth = [0, 0, 0, 0, 1, 1]
    predicted = [0, 0, 0, 0, 0, 1]

    assert accuracy(truth, predicted) == pytest.approx(5 / 6)
    assert balanced_accuracy(truth, predicted) == pytest.approx((1.0 + 0.5) / 2)


def test_auroc_counts_ties_as_half_by_hand():
    # Pairs (positive, negative): 0.9>0.5, 0.9>0.4, 0.4<0.5, 0.4=0.4 -> (1 + 1 + 0 + 0.5) / 4
    assert auroc([True, True, False, False], [0.9, 0.4, 0.5, 0.4]) == pytest.approx(0.625)


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    positive = rng.random(200) < 0.3
    scores = np.round(rng.random(200) * 0.5 + positive * 0.3, 1)  # coarse rounding makes many ties

    assert auroc(positive, scores) == pytest.approx(roc_auc_score(positive, scores))


def test_auroc_is_undefined_without_both_groups():
    assert auroc([True, True], [0.2, 0.8]) is None
    assert auroc([False, False], [0.2, 0.8]) is None


def test_ece_on_a_known_case():
    confidence = [0.55, 0.55, 0.95, 0.95]
    correct = [False, False, True, True]

    # bin (0.533, 0.6]: accuracy 0 at confidence 0.55; bin (0.933, 1]: accuracy 1 at 0.95; each holds half
    assert expected_calibration_error(confidence, correct) == pytest.approx((0.55 + 0.05) / 2)


def test_ece_uses_fifteen_equal_width_bins():
    # 0.62 and 0.68 share a bin of ten (ECE 0.15) but not of fifteen: (0.6, 0.667] and (0.667, 0.733]
    confidence, correct = [0.62, 0.68], [True, False]

    assert expected_calibration_error(confidence, correct) == pytest.approx((0.38 + 0.68) / 2)
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(0.15)


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)


def test_reliability_bins_are_closed_on_the_right_and_keep_certainty_in_the_last_bin():
    mean_confidence, bin_accuracy, counts = reliability_bins([1 / 15 - 1e-9, 1.0, 1.0, 0.0], [True, True, False, True])

    assert counts.tolist() == [2] + [0] * 13 + [2]
    assert bin_accuracy[-1] == pytest.approx(0.5)
    assert mean_confidence[-1] == pytest.approx(1.0)
    assert np.isnan(bin_accuracy[1:-1]).all()


# --- Masks and pointing -------------------------------------------------------------------------------------------


def test_iou_and_dice_by_hand():
    predicted = np.zeros((4, 4), dtype=bool)
    truth = np.zeros((4, 4), dtype=bool)
    predicted[0, :3] = True  # 3 pixels
    truth[0, 1:] = True  # 3 pixels, 2 shared

    assert mask_iou(predicted, truth) == pytest.approx(2 / 4)
    assert mask_dice(predicted, truth) == pytest.approx(2 * 2 / 6)


def test_iou_and_dice_match_sklearn_on_random_masks():
    rng = np.random.default_rng(1)
    predicted, truth = rng.random((32, 32)) < 0.3, rng.random((32, 32)) < 0.4

    assert mask_iou(predicted, truth) == pytest.approx(jaccard_score(truth.ravel(), predicted.ravel()))
    assert mask_dice(predicted, truth) == pytest.approx(f1_score(truth.ravel(), predicted.ravel()))


def test_iou_and_dice_of_empty_masks():
    empty, some = np.zeros((3, 3), dtype=bool), np.eye(3, dtype=bool)

    assert mask_iou(empty, empty) == mask_dice(empty, empty) == 1.0
    assert mask_iou(empty, some) == mask_dice(empty, some) == 0.0
    assert mask_iou(some, empty) == mask_dice(some, empty) == 0.0


def test_boxes_mask_fills_the_pixels_whose_centre_lies_in_a_box():
    # The second box lies between the centres 4.5 and 5.5 of its row, so it covers no pixel.
    mask = boxes_mask([(1.0, 0.0, 3.0, 2.0), (4.6, 3.4, 5.4, 3.6)], (5, 6))

    expected = np.zeros((5, 6), dtype=bool)
    expected[0:2, 1:3] = True  # x centres 1.5, 2.5 lie in [1, 3]; y centres 0.5, 1.5 in [0, 2]
    assert (mask == expected).all()


def test_pointing_hits_only_when_the_peak_lies_inside_the_region():
    region = boxes_mask([(2.0, 2.0, 4.0, 4.0)], (8, 8))
    heatmap = np.zeros((8, 8), dtype=np.float32)
    heatmap[3, 3] = 1.0
    assert pointing_hit(heatmap, region)

    heatmap[6, 6] = 2.0
    assert not pointing_hit(heatmap, region)


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
    masks = {name: iou for name in (ENSEMBLE, "a", "b")} if iou is not None else {}
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
    assert set(metrics["models"]) == {"resnet50", "efficientnet_b0", "densenet121"}
    for row in [metrics[ENSEMBLE], *metrics["models"].values()]:
        for key in ("accuracy", "balanced_accuracy", "auroc", "ece", "iou", "dice", "pointing"):
            assert 0.0 <= row[key] <= 1.0, key
        assert round(row["accuracy"] * 6, 6) == round(row["accuracy"] * 6)  # a share of six images
    ensemble = metrics[ENSEMBLE]
    assert ensemble["flagged_share"] == pytest.approx(counts["flagged"] / 6)
    assert 0.0 <= ensemble["box_iou"] <= 1.0
    table_lines = [line for line in (out / "metrics.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table_lines) == 5 and "| Box IoU |" in table_lines[0]  # header, ensemble and three models
    assert table_lines[1].startswith("| Ensemble (consensus mask) |")
    assert "| Ensemble (consensus mask) |" in capsys.readouterr().out
    for plot in ("reliability.png", "uncertainty.png", "overlays.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_evaluate_command_names_labels_that_map_to_no_class(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"filename,label\n{DEMO_BUSI / 'images' / _demo_rows(1)[0]['filename']},tb\n")

    with pytest.raises(SystemExit, match="'tb'"):
        main(["evaluate", "--model", str(DEMO_ENSEMBLE), "--data", str(manifest), "--out", str(tmp_path / "out")])
