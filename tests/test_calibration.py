"""Temperature scaling: the fit finds a known temperature, a temperature changes how sure the panel is and not
what it says, and training and `python -m ml calibrate` fit it on the same validation images. No Django."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from ml.__main__ import main
from ml.uncertainty import entropy, mc_dropout_probs, temperature_fit
from tests.lesion_sets import lesion_set_write

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def labelled_logits(sharpness: float, images: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of one pass, (1, images, 2), and labels drawn from softmax(logits / sharpness): a model whose logits
    are `sharpness` times too large is overconfident, and its right temperature is `sharpness`."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(images, 2, generator=generator)
    labels = torch.multinomial(F.softmax(logits / sharpness, dim=-1), 1, generator=generator).squeeze(1)
    return logits.unsqueeze(0), labels


@pytest.mark.parametrize("sharpness", [0.5, 1.0, 2.0, 4.0])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(sharpness):
    logits, labels = labelled_logits(sharpness)
    assert temperature_fit(logits, labels) == pytest.approx(sharpness, rel=0.15)


def test_a_temperature_keeps_each_passs_diagnosis_and_only_softens_it():
    head = torch.nn.Linear(8, 2)
    pooled = torch.randn(16, 8)
    plain = mc_dropout_probs(head, pooled, 5, 0.3, torch.Generator().manual_seed(0))
    softened = mc_dropout_probs(head, pooled, 5, 0.3, torch.Generator().manual_seed(0), temperature=3.0)
    assert torch.equal(plain.argmax(-1), softened.argmax(-1))
    assert (entropy(softened) >= entropy(plain) - 1e-6).all() and (entropy(softened) > entropy(plain)).any()


def train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--arch", "resnet18", "efficientnet_lite0",
            "--input-size", "32", "--epochs", "1", "--no-hub", *extra]


def test_training_and_the_calibrate_command_fit_the_same_temperature_on_the_same_validation_images(tmp_path, capsys):
    data, rows = lesion_set_write(tmp_path / "data", 24, seed=3, speckled=True)
    main(train_args(data, tmp_path / "calibrated", "--calibrate"))
    main(train_args(data, tmp_path / "plain"))
    calibrated = json.loads((tmp_path / "calibrated" / "manifest.json").read_text())
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    temperatures = calibrated["temperatures"]
    assert set(temperatures) == {"resnet18", "efficientnet_lite0"} and len(set(temperatures.values())) == 1
    assert plain["temperatures"] == {}
    capsys.readouterr()

    main(["calibrate", "--model", str(tmp_path / "plain"), "--data", str(data), "--write"])
    printed = capsys.readouterr().out
    assert f"on the checkpoint's {calibrated['metrics']['val_images']} validation images" in printed
    assert "as trained" in printed and "temperature-scaled" in printed
    written = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    # The same weights as the calibrated training (same seed), so the same temperature: the same images were found.
    assert written["temperatures"] == temperatures
    assert written["annotate"]["uncertainty_threshold"] == written["metrics"]["calibration"]["after"][
        "uncertainty_threshold"]


def test_calibrate_refuses_data_the_checkpoint_was_not_trained_on(tmp_path):
    data, rows = lesion_set_write(tmp_path / "data", 24, seed=4, speckled=True)
    main(train_args(data, tmp_path / "panel"))
    fewer = tmp_path / "data" / "fewer.csv"
    with fewer.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[1:])
    before = (tmp_path / "panel" / "manifest.json").read_text()

    with pytest.raises(SystemExit, match="not the data this checkpoint was trained on"):
        main(["calibrate", "--model", str(tmp_path / "panel"), "--data", str(fewer), "--write"])
    assert (tmp_path / "panel" / "manifest.json").read_text() == before
