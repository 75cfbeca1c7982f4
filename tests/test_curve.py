"""`python -m ml segment` and `python -m ml learning-curve` on tiny data: the order approvals come in, the member
trained and gated beside a panel, and the curve's rows. No Django."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from ml.__main__ import main
from ml.config import AnnotateConfig, EnsembleManifest, SegmenterConfig
from ml.curve import approval_order, labelled_images_read, learning_curve, member_train, segment_fit
from ml.ensemble import ensemble_build, load_ensemble, save_ensemble
from ml.segment import SegmentTrainConfig
from tests.lesion_sets import lesion_set_write

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def panel_folder(tmp_path_factory):
    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=32, annotate=AnnotateConfig(mc_samples=2),
                                label_map={"normal": "normal", "malignant": "lesion"})
    return save_ensemble(ensemble_build(manifest), tmp_path_factory.mktemp("panel"))


def test_approvals_come_in_the_review_queues_order_or_at_random_by_seed():
    annotations = [SimpleNamespace(flagged=f, uncertainty=u) for f, u in
                   [(False, 0.9), (True, 0.2), (True, 0.7), (False, 0.1)]]

    assert approval_order(annotations, "uncertainty", seed=0) == [2, 1, 0, 3]  # flagged first, most uncertain first
    shuffled = approval_order(annotations, "random", seed=5)
    assert sorted(shuffled) == [0, 1, 2, 3] and shuffled == approval_order(annotations, "random", seed=5)
    assert len({tuple(approval_order(annotations, "random", seed=s)) for s in range(10)}) > 1


def test_segment_fit_trains_on_the_non_held_out_images_and_the_gate_sets_the_proposal(panel_folder, tmp_path):
    data_csv, rows = lesion_set_write(tmp_path / "data", 24, seed=0)
    ensemble = load_ensemble(panel_folder, device="cpu")
    data = labelled_images_read(ensemble, rows, data_csv.parent, None)

    report = segment_fit(ensemble, data, 4, "uncertainty", SegmenterConfig(input_size=32),
                         SegmentTrainConfig(epochs=1), None)

    assert report["approved_masks"] == 4 and report["train_images"] + report["held_out_images"] == 24
    assert ensemble.segmenter is not None and ensemble.manifest.segmenter == SegmenterConfig(input_size=32)
    assert ensemble.manifest.annotate.proposal == report["proposal"] in ("consensus", "segmentation")
    assert report["gate"]["images"] <= report["held_out_images"]


def test_the_learning_curve_has_a_row_per_count_and_order_scored_on_the_test_set(panel_folder, tmp_path):
    train_csv, train_rows = lesion_set_write(tmp_path / "train", 12, seed=1)
    test_csv, test_rows = lesion_set_write(tmp_path / "test", 6, seed=2)
    ensemble = load_ensemble(panel_folder, device="cpu")
    train = labelled_images_read(ensemble, train_rows, train_csv.parent, None)
    test = labelled_images_read(ensemble, test_rows, test_csv.parent, None)

    rows = learning_curve(ensemble, train, test, [0, 3, None], ["uncertainty", "random"], [0, 1],
                          SegmenterConfig(input_size=32), SegmentTrainConfig(epochs=1), None, progress=lambda _: None)

    assert [(row["k"], row["order"]) for row in rows] == [(0, "–"), (3, "uncertainty"), (3, "random"), (12, "–")]
    assert all(len(row["iou"]) == 2 and all(0 <= iou <= 1 for iou in row["iou"]) for row in rows)


def test_a_member_trained_with_a_seed_is_the_same_whatever_drew_on_torchs_generator_before(panel_folder, tmp_path):
    data_csv, rows = lesion_set_write(tmp_path / "data", 8, seed=3)
    ensemble = load_ensemble(panel_folder, device="cpu")
    data = labelled_images_read(ensemble, rows, data_csv.parent, None)
    indices = list(range(len(rows)))

    first, _, _ = member_train(ensemble, data, indices, [1, 2], SegmenterConfig(input_size=32),
                               SegmentTrainConfig(epochs=1, seed=4), None)
    torch.rand(100)  # as another row's training, or annotating, would
    second, _, _ = member_train(ensemble, data, indices, [1, 2], SegmenterConfig(input_size=32),
                                SegmentTrainConfig(epochs=1, seed=4), None)

    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_the_segment_command_writes_the_member_into_the_checkpoint(panel_folder, tmp_path, capsys):
    import shutil

    model = shutil.copytree(panel_folder, tmp_path / "model")
    data_csv, _ = lesion_set_write(tmp_path / "data", 15, seed=3)
    main(["segment", "--model", str(model), "--data", str(data_csv), "--approved", "3", "--epochs", "1",
          "--input-size", "32", "--no-hub", "--write"])

    printed = capsys.readouterr().out
    assert "3 approved masks" in printed and "proposal:" in printed
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["segmenter"]["input_size"] == 32
    assert manifest["metrics"]["segmenter"]["approved_masks"] == 3
    assert manifest["metrics"]["segmenter"]["pseudo_masks_beside_approved"] is False
    assert load_ensemble(model, device="cpu").segmenter is not None


def test_the_segment_command_keeps_pseudo_masks_beside_approved_ones_when_asked(panel_folder, tmp_path):
    import shutil

    model = shutil.copytree(panel_folder, tmp_path / "model")
    data_csv, _ = lesion_set_write(tmp_path / "data", 15, seed=3)
    main(["segment", "--model", str(model), "--data", str(data_csv), "--approved", "3", "--epochs", "1",
          "--input-size", "32", "--no-hub", "--pseudo-masks-beside-approved", "--write"])

    assert json.loads((model / "manifest.json").read_text())["metrics"]["segmenter"]["pseudo_masks_beside_approved"]


def test_the_learning_curve_refuses_test_images_it_would_train_on(panel_folder, tmp_path):
    data_csv, _ = lesion_set_write(tmp_path / "data", 6, seed=4)
    with pytest.raises(SystemExit, match="in both --data and --test"):
        main(["learning-curve", "--model", str(panel_folder), "--data", str(data_csv), "--test", str(data_csv),
              "--epochs", "1", "--input-size", "32", "--no-hub", "--seeds", "0"])
