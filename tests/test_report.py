"""`python -m ml report` on tiny data: one command from a manifest to the table over seeds, resumable; and a split
that is the same from one run to the next. No Django."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.__main__ import main
from ml.report import ReportConfig, report_run, spread
from tests.lesion_sets import lesion_set_write

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parent.parent


def tiny_config(**changes) -> ReportConfig:
    settings = dict(architectures=("resnet18",), input_size=32, epochs=1, seeds=(0, 1), approved=(0, 3),
                    member_epochs=1, member_input_size=32, use_hub=False)
    return ReportConfig(**{**settings, **changes})


def test_the_report_trains_each_seed_scores_the_test_split_and_writes_the_table(tmp_path):
    data, _ = lesion_set_write(tmp_path / "data", 30, seed=0, speckled=True)
    said = []

    report = report_run(data, tmp_path / "report", tiny_config(), progress=said.append)

    assert [seed["seed"] for seed in report["seeds"]] == [0, 1]
    for seed in report["seeds"]:
        assert (tmp_path / "report" / f"seed-{seed['seed']}" / "panel" / "manifest.json").is_file()
        assert seed["metrics"]["counts"]["images"] == len(list(csv.DictReader(
            (tmp_path / "report" / "split" / "test.csv").open())))
        assert set(seed["members"]) == {"0", "3"}
        assert all(0 <= member["proposal"][0] <= 1 for member in seed["members"].values())
        calibrated = json.loads((tmp_path / "report" / f"seed-{seed['seed']}" / "calibrated.json").read_text())
        assert calibrated["metrics"]["accuracy"] is not None and calibrated["validation"]["after"]["temperatures"]
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| the panel |" in table and "| the paper's intersection |" in table
    assert "| the panel, temperature-scaled |" in table and "seed 1: T = " in table
    assert "proposal** with 3 approved masks" in table and " ± " in table
    assert sum("training the panel" in line for line in said) == 2


def test_a_rerun_trains_nothing_and_a_changed_recipe_keeps_the_panels(tmp_path):
    data, _ = lesion_set_write(tmp_path / "data", 24, seed=1, speckled=True)
    report_run(data, tmp_path / "report", tiny_config(seeds=(0,)), progress=lambda _: None)
    said = []

    report_run(data, tmp_path / "report", tiny_config(seeds=(0,)), progress=said.append)
    assert said == [f"seed 0: scores from {tmp_path / 'report' / 'seed-0' / 'result.json'}"]

    said.clear()
    again = report_run(data, tmp_path / "report", tiny_config(seeds=(0,), approved=(2,)), progress=said.append)
    assert not any("training the panel" in line for line in said)
    assert set(again["seeds"][0]["members"]) == {"2"}


def test_the_spread_is_the_mean_and_the_sample_standard_deviation():
    assert spread([0.5, 0.7]) == "60.0 ± 14.1 %"
    assert spread([0.25]) == "25.0 %"
    assert spread([0.9, None]) == "–"
    assert spread([0.8, 0.9], percent=False) == "0.850 ± 0.071"


def test_the_report_command_prints_the_table(tmp_path, capsys):
    data, _ = lesion_set_write(tmp_path / "data", 24, seed=2, speckled=True)
    main(["report", "--data", str(data), "--out", str(tmp_path / "report"), "--arch", "resnet18", "--input-size", "32",
          "--epochs", "1", "--seeds", "0", "--approved", "2", "--member-epochs", "1", "--no-hub"])

    printed = capsys.readouterr().out
    assert "| Diagnosis |" in printed and "written to" in printed
    assert json.loads((tmp_path / "report" / "report.json").read_text())["config"]["approved"] == [2]


def test_the_split_is_the_same_whatever_pythons_hash_seed(tmp_path):
    # Near-duplicate pairs whose two images carry different labels (a tie for the label the pair is filed under),
    # among single images of either label.
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for pair in range(24):
        base = rng.integers(0, 256, (32, 32)).astype(np.uint8)
        labels = ("benign", "malignant") if pair < 8 else ("benign",) if pair < 16 else ("malignant",)
        for twin, label in enumerate(labels):
            name = f"images/pair{pair}-{twin}.png"
            Image.fromarray(base).save(tmp_path / name)
            rows.append({"filename": name, "label": label})
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filename", "label"])
        writer.writeheader()
        writer.writerows(rows)

    splits = set()
    for hash_seed in ("1", "2", "3", "4"):
        out = tmp_path / f"split-{hash_seed}"
        subprocess.run([sys.executable, "-m", "ml", "split", "--data", str(tmp_path / "manifest.csv"), "--out",
                        str(out), "--seed", "1"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
        splits.add((out / "test.csv").read_text())
    assert len(splits) == 1
