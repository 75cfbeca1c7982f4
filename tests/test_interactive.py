"""Correcting a mask with clicks: both refiners follow the clicks, the simulated radiologist clicks where the protocol
says, the learned refiner trains and travels in a checkpoint, and the commands print what scripts read. No Django."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ml.__main__ import main
from ml.clicks import click_session, polygon_session, sessions_summary
from ml.config import IMAGENET_MEAN, IMAGENET_STD, AnnotateConfig, EnsembleManifest, SegmenterConfig
from ml.curve import HELD_OUT_PERCENT
from ml.ensemble import ensemble_build, load_ensemble, save_ensemble
from ml.finetune import held_out
from ml.interactive import (MAX_CLICKS, Click, ClickRefiner, RefinerTrainConfig, crop_paste, focus_box, mask_refine,
                            next_click, refiner_from_member, refiner_load, refiner_sample, refiner_train)
from ml.metrics import mask_iou
from ml.models import packaged_imagenet_weights
from ml.segment import encoder_batchnorm_recalibrate, segmenter_build
from tests.lesion_sets import lesion_set_write

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIDE = 120


def disc(centre, radius=25, side=SIDE) -> np.ndarray:
    ys, xs = np.mgrid[:side, :side]
    return (ys - centre[1]) ** 2 + (xs - centre[0]) ** 2 <= radius ** 2


def scan(lesion: np.ndarray, seed: int = 0) -> np.ndarray:
    """A noisy grey image with the lesion dark, as in ultrasound."""
    noise = np.random.default_rng(seed).normal(0, 8, lesion.shape)
    return (np.where(lesion, 60, 180) + noise).clip(0, 255).astype(np.uint8)


# --- The training-free refiner -----------------------------------------------------------------------------------


def test_a_positive_click_on_the_missed_lesion_moves_an_offset_mask_onto_it():
    lesion = disc((60, 60))
    offset = disc((85, 60), radius=20)
    click = next_click(offset, lesion)

    refined = mask_refine(scan(lesion), offset, [click])

    assert click.positive and lesion[int(click.y), int(click.x)]
    assert mask_iou(refined, lesion) > 0.8 > mask_iou(offset, lesion)


def test_a_positive_click_on_an_empty_mask_outlines_the_lesion_around_it():
    lesion = disc((50, 70))
    refined = mask_refine(scan(lesion), np.zeros_like(lesion), [Click(50, 70, True)])
    assert mask_iou(refined, lesion) > 0.8


def test_a_negative_click_removes_a_false_region():
    lesion = disc((40, 60), radius=18)
    image = scan(lesion | disc((90, 60), radius=15))  # a second dark blob that is not the lesion
    both = lesion | disc((90, 60), radius=15)

    refined = mask_refine(image, both, [Click(90, 60, False)])

    assert not refined[60, 90] and mask_iou(refined, lesion) > mask_iou(both, lesion)


def test_no_clicks_change_nothing_and_pixels_under_a_click_end_as_it_says():
    lesion = disc((60, 60))
    assert np.array_equal(mask_refine(scan(lesion), lesion, []), lesion)
    flat = np.full(lesion.shape, 128, np.uint8)  # nothing to see: only the clicks say anything
    refined = mask_refine(flat, lesion, [Click(60, 60, False), Click(5, 5, True)])
    assert not refined[60, 60] and refined[5, 5]


@pytest.mark.parametrize("clicks, mask_side, reason", [
    ([Click(SIDE, 3, True)], SIDE, "outside"),
    ([Click(3, -1, True)], SIDE, "outside"),
    ([Click(3, 3, True)] * (MAX_CLICKS + 1), SIDE, "at most"),
    ([Click(3, 3, True)], SIDE - 1, "the mask is"),
])
def test_unusable_clicks_or_masks_are_refused_with_the_reason(clicks, mask_side, reason):
    with pytest.raises(ValueError, match=reason):
        mask_refine(np.zeros((SIDE, SIDE), np.uint8), np.zeros((mask_side, mask_side), bool), clicks)


def test_the_refinement_looks_at_a_crop_around_the_mask_and_the_positive_clicks():
    mask = disc((30, 30), radius=10)
    x0, y0, x1, y1 = focus_box(mask, [Click(70, 30, True), Click(110, 110, False)])
    assert x0 <= 20 and x1 >= 71 and y0 <= 20 and y1 >= 40  # the mask and the positive click, with a margin
    assert x1 < 110 or y1 < 110  # a negative click does not widen it
    assert focus_box(np.zeros_like(mask), [Click(5, 5, False)]) is None


# --- The simulated radiologist -----------------------------------------------------------------------------------


def test_the_first_click_goes_to_the_centre_of_the_missed_lesion():
    click = next_click(np.zeros((SIDE, SIDE), bool), disc((40, 70)))
    assert click.positive and abs(click.x - 40) <= 1 and abs(click.y - 70) <= 1


def test_a_false_region_larger_than_the_missed_one_gets_a_negative_click_at_its_centre():
    truth = disc((30, 30), radius=10)
    prediction = truth.copy()
    prediction[70:110, 60:100] = True  # 40 x 40 false square, nothing missed
    click = next_click(prediction, truth)
    assert not click.positive and abs(click.x - 79.5) <= 1 and abs(click.y - 89.5) <= 1
    assert next_click(truth, truth) is None


def test_a_session_counts_the_clicks_to_the_target_and_a_failure_as_the_maximum():
    truth = disc((60, 60))
    perfect = click_session(None, truth, np.zeros_like(truth), lambda image, mask, clicks: truth, 20, 0.9)
    stuck = click_session(None, truth, np.zeros_like(truth), None, 20, 0.9)

    assert perfect.ious[:2] == [0.0, 1.0] and perfect.clicks_to(0.85, 20) == 1
    assert stuck.clicks_to(0.85, 20) == 20 and len(stuck.ious) == 21
    summary = sessions_summary([perfect, stuck], (0.85,), 20)
    assert summary["noc"][0.85] == 10.5 and summary["iou"][1] == 0.5
    assert summary["ms_per_click"] is not None and sessions_summary([stuck], (0.85,), 20)["ms_per_click"] is None


def test_a_session_already_on_target_needs_no_click():
    truth = disc((60, 60))
    assert click_session(None, truth, truth, None, 20, 0.9).clicks_to(0.85, 20) == 0


def test_drawing_by_hand_needs_a_click_per_vertex_four_for_a_square_more_for_a_disc():
    square = np.zeros((SIDE, SIDE), bool)
    square[30:90, 20:100] = True
    by_hand = polygon_session(square, 20)

    assert by_hand.ious[:4] == [0.0, 0.0, 0.0, by_hand.ious[3]] and by_hand.ious[3] < 0.85
    assert by_hand.clicks_to(0.85, 20) == 4 and by_hand.ious[4] > 0.97 and len(by_hand.ious) == 21
    round_one = polygon_session(disc((60, 60), radius=40), 20)
    assert 6 <= round_one.clicks_to(0.85, 20) <= 9 and round_one.ious == sorted(round_one.ious)
    assert polygon_session(square, 3).clicks_to(0.85, 3) == 3  # never reached: counted as the maximum


# --- The learned refiner -----------------------------------------------------------------------------------------


def disc_samples(count: int, seed: int):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        lesion = disc(tuple(rng.integers(35, 85, 2)), radius=int(rng.integers(12, 25)))
        image = np.repeat(scan(lesion, seed=i)[..., None], 3, axis=2)
        samples.append(refiner_sample(image, lesion, np.zeros_like(lesion)))
    return samples


def test_the_networks_coarse_answer_is_pasted_with_a_smooth_outline_not_in_steps():
    # a disc the network sees at 16 px, its probabilities pasted into a 96 px box: the outline stays round
    lesion = disc((48, 48), radius=30, side=96)
    coarse = cv2.resize(lesion.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    pasted = crop_paste(coarse, (12, 12, 108, 108), (SIDE, SIDE), threshold=0.5)
    expected = np.zeros((SIDE, SIDE), bool)
    expected[12:108, 12:108] = lesion
    assert not pasted[:12].any() and not pasted[:, :12].any()
    assert mask_iou(pasted, expected) > 0.97


def test_the_refiner_answers_a_mirrored_scan_with_the_mirrored_mask():
    torch.manual_seed(0)
    member = segmenter_build(SegmenterConfig(input_size=64), packaged_imagenet_weights("efficientnet_lite0"))
    refiner = ClickRefiner(refiner_from_member(member).eval(), IMAGENET_MEAN, IMAGENET_STD)
    lesion = disc((20, 30), radius=12, side=64) | disc((40, 36), radius=6, side=64)  # faces one way
    image = np.repeat(scan(lesion)[..., None], 3, axis=2)
    clicks, mirrored = [Click(20, 30, True), Click(50, 10, False)], [Click(43, 30, True), Click(13, 10, False)]
    whole = (0, 0, 64, 64)  # the network's input size: no resizing, so the mirror is exact to the pixel
    with torch.no_grad():
        probs = refiner.flip_averaged_probabilities(image, lesion, clicks, whole)
        of_mirror = refiner.flip_averaged_probabilities(image[:, ::-1].copy(), lesion[:, ::-1].copy(), mirrored, whole)
        one_pass, one_pass_of_mirror = refiner.crop_probabilities(
            [image, image[:, ::-1].copy()], [lesion, lesion[:, ::-1].copy()], [clicks, mirrored], [whole, whole])
    np.testing.assert_allclose(of_mirror, probs[:, ::-1], atol=1e-5)
    assert np.abs(one_pass_of_mirror - one_pass[:, ::-1]).max() > 1e-3  # a single pass does not see it so


@pytest.fixture(scope="module")
def trained_refiner(one_torch_thread):
    torch.manual_seed(0)
    member = segmenter_build(SegmenterConfig(input_size=64), packaged_imagenet_weights("efficientnet_lite0"))
    refiner = ClickRefiner(refiner_from_member(member), IMAGENET_MEAN, IMAGENET_STD)
    # 12 epochs: the encoder statistics estimated afresh on 16 tiny scans slow the start (8 were enough without)
    losses = refiner_train(refiner, disc_samples(16, seed=0), RefinerTrainConfig(epochs=12, batch_size=8))
    return refiner, losses


def test_the_refiner_starts_as_the_member_it_is_built_on():
    member = segmenter_build(SegmenterConfig(input_size=64)).eval()
    refiner = refiner_from_member(member).eval()
    image = torch.rand(1, 3, 64, 64)
    hints = torch.rand(1, 3, 64, 64)  # mask and clicks: ignored until training teaches it otherwise
    with torch.no_grad():
        assert torch.allclose(member(image), refiner(torch.cat([image, hints], 1)), atol=1e-5)


def test_a_refiner_may_look_at_crops_of_another_size_than_its_member_with_the_same_weights():
    member = segmenter_build(SegmenterConfig(input_size=64)).eval()
    refiner = refiner_from_member(member, input_size=96).eval()
    assert (refiner.config.input_size, member.config.input_size) == (96, 64)
    image, hints = torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(member(image), refiner(torch.cat([image, hints], 1)), atol=1e-5)


def encoder_statistics(net) -> list[torch.Tensor]:
    return [buffer.clone() for name, buffer in net.encoder.named_buffers() if name.endswith("running_mean")]


def test_recalibrated_encoder_statistics_are_those_of_the_batches_whatever_they_were_and_no_weight_moves():
    torch.manual_seed(0)
    batches = [torch.rand(4, 3, 64, 64) for _ in range(3)]
    nets = [segmenter_build(SegmenterConfig(input_size=64)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for buffer in (b for name, b in nets[1].encoder.named_buffers() if name.endswith("running_mean")):
        buffer.add_(5.0)  # statistics of other inputs, which recalibration must forget
    weights = {name: p.clone() for name, p in nets[0].named_parameters()}
    before = encoder_statistics(nets[0])

    for net in nets:
        encoder_batchnorm_recalibrate(net, batches)

    after = [encoder_statistics(net) for net in nets]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*after))
    assert any(not torch.allclose(a, b) for a, b in zip(before, after[0]))
    assert all(torch.equal(p, weights[name]) for name, p in nets[0].named_parameters())
    assert not nets[0].training and all(layer.momentum == 0.1 for layer in nets[0].encoder.modules()
                                        if isinstance(layer, torch.nn.BatchNorm2d))


def test_the_refiner_trains_with_encoder_statistics_of_its_own_crops_kept_fixed():
    torch.manual_seed(0)
    member = segmenter_build(SegmenterConfig(input_size=64), packaged_imagenet_weights("efficientnet_lite0"))
    imagenet = encoder_statistics(member)
    trained = {}
    for recalibrate in (True, False):
        refiner = ClickRefiner(refiner_from_member(member), IMAGENET_MEAN, IMAGENET_STD)
        refiner_train(refiner, disc_samples(6, seed=2),
                      RefinerTrainConfig(epochs=1, batch_size=4, recalibrate_encoder_batchnorm=recalibrate))
        trained[recalibrate] = encoder_statistics(refiner.net)
    assert all(torch.equal(a, b) for a, b in zip(imagenet, trained[False]))  # kept as the member had them
    assert any(not torch.allclose(a, b) for a, b in zip(imagenet, trained[True]))


def test_the_refiner_trains_on_tiny_images_and_its_loss_falls(trained_refiner):
    _, losses = trained_refiner
    assert losses[-1] < 0.8 * losses[0]


def test_the_trained_refiner_outlines_an_unseen_lesion_from_one_click(trained_refiner):
    refiner, _ = trained_refiner
    ious = []
    for sample in disc_samples(4, seed=1):
        click = next_click(sample.proposal, sample.truth)
        ious.append(mask_iou(mask_refine(sample.image, sample.proposal, [click], refiner), sample.truth))
    assert np.mean(ious) > 0.5


def test_a_checkpoint_carries_the_refiner_and_the_web_process_loads_it_alone(trained_refiner, tmp_path):
    refiner, _ = trained_refiner
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=32, annotate=AnnotateConfig(mc_samples=2), refiner=refiner.net.config)
    ensemble = ensemble_build(manifest)
    ensemble.refiner = refiner.net
    folder = save_ensemble(ensemble, tmp_path / "model")

    loaded = refiner_load(folder)
    sample = disc_samples(1, seed=2)[0]
    clicks = [next_click(sample.proposal, sample.truth)]
    assert np.array_equal(mask_refine(sample.image, sample.proposal, clicks, loaded),
                          mask_refine(sample.image, sample.proposal, clicks, refiner))
    assert load_ensemble(folder, device="cpu").refiner is not None
    manifest.refiner = None
    save_ensemble(ensemble_build(manifest), tmp_path / "plain")
    assert refiner_load(tmp_path / "plain") is None


def test_a_checkpoint_of_int8_weights_keeps_its_refiner_exact_and_only_the_panel_quantised(trained_refiner, tmp_path):
    refiner, _ = trained_refiner
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=32, weights_dtype="int8", refiner=refiner.net.config)
    ensemble = ensemble_build(manifest)
    ensemble.refiner = refiner.net
    folder = save_ensemble(ensemble, tmp_path / "model")

    loaded = refiner_load(folder).net.state_dict()
    assert all(torch.equal(tensor, loaded[key]) for key, tensor in refiner.net.state_dict().items())
    panel = load_ensemble(folder, device="cpu").models["resnet18"].state_dict()
    assert any(not torch.equal(tensor, panel[key]) for key, tensor in ensemble.models["resnet18"].state_dict().items())


# --- The commands ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panel_folder(tmp_path_factory):
    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=32, annotate=AnnotateConfig(mc_samples=2),
                                label_map={"normal": "normal", "malignant": "lesion"},
                                segmenter=SegmenterConfig(input_size=64))
    ensemble = ensemble_build(manifest)
    ensemble.segmenter = segmenter_build(manifest.segmenter)
    return save_ensemble(ensemble, tmp_path_factory.mktemp("panel"))


def test_the_clicks_command_prints_each_method_and_the_best_last(panel_folder, tmp_path, capsys):
    data_csv, _ = lesion_set_write(tmp_path / "data", 6, seed=5)
    main(["clicks", "--model", str(panel_folder), "--data", str(data_csv), "--max-clicks", "5"])

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("4 lesion images of 6") and "no learned click refiner" in lines[0]
    assert any("GrabCut" in line for line in lines) and any("no refinement" in line for line in lines)
    assert any("polygon drawn by hand" in line for line in lines)
    method, noc = lines[-1].removeprefix("NoC@85 ").split(": ")
    assert method in ("polygon", "proposal", "grabcut") and 0 <= float(noc) <= 5


def test_the_clicks_command_leaves_out_excluded_images_and_can_judge_the_held_out_share_alone(panel_folder, tmp_path,
                                                                                              capsys):
    data_csv, rows = lesion_set_write(tmp_path / "data", 12, seed=6, speckled=True)
    excluded = tmp_path / "exclude.csv"
    excluded.write_text("filename\n" + Path(rows[1]["filename"]).name + "\n")  # a lesion image
    kept = [row for n, row in enumerate(rows) if n != 1]
    held = [row for row in kept
            if held_out(hashlib.sha256((data_csv.parent / row["filename"]).read_bytes()).hexdigest(), HELD_OUT_PERCENT)]
    held_lesions = sum(row["label"] != "normal" for row in held)
    assert 0 < len(held) < len(kept)  # the seed puts some, not all, in the held-out share

    main(["clicks", "--model", str(panel_folder), "--data", str(data_csv), "--max-clicks", "2", "--exclude",
          str(excluded)])
    assert capsys.readouterr().out.startswith("7 lesion images of 11")
    main(["clicks", "--model", str(panel_folder), "--data", str(data_csv), "--max-clicks", "2", "--exclude",
          str(excluded), "--held-out"])
    assert capsys.readouterr().out.startswith(f"{held_lesions} lesion images of {len(held)}")


def test_the_refiner_command_trains_judges_against_grabcut_and_writes_only_a_better_refiner(panel_folder, tmp_path,
                                                                                         capsys):
    model = shutil.copytree(panel_folder, tmp_path / "model")
    data_csv, _ = lesion_set_write(tmp_path / "data", 24, seed=6)
    main(["refiner", "--model", str(model), "--data", str(data_csv), "--epochs", "1", "--max-clicks", "3",
          "--no-hub", "--write"])

    printed = capsys.readouterr().out
    assert "trained on" in printed and "held out:" in printed and "click refiner (learned)" in printed
    kept = "needs fewer clicks: kept" in printed
    assert kept or "is no better than GrabCut: not kept" in printed
    manifest = json.loads((model / "manifest.json").read_text())
    assert (manifest.get("refiner") is not None) == kept == (model / "refiner.safetensors").exists()


def test_a_fine_tuning_run_trains_a_refiner_from_approved_masks_and_keeps_it_only_if_it_needs_fewer_clicks():
    from PIL import Image

    from ml.finetune import MIN_REFINER_MASKS, FinetuneConfig, FinetuneSample, refiner_finetune

    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=32, annotate=AnnotateConfig(mc_samples=2),
                                segmenter=SegmenterConfig(input_size=64))
    candidate = ensemble_build(manifest)
    candidate.segmenter = segmenter_build(manifest.segmenter).eval()
    samples = [FinetuneSample(key=str(i), image=Image.fromarray(s.image), label="lesion", mask=s.truth)
               for i, s in enumerate(disc_samples(MIN_REFINER_MASKS + 5, seed=3))]
    config = FinetuneConfig(refiner_epochs=1)

    too_few = refiner_finetune(candidate, samples[:MIN_REFINER_MASKS - 1], samples[-5:], config)
    assert not too_few["trained"] and candidate.refiner is None
    record = refiner_finetune(candidate, samples[:MIN_REFINER_MASKS], samples[-5:], config)
    assert record["trained"] and record["masks"] == MIN_REFINER_MASKS and record["before"] == "grabcut"
    assert record["kept"] == (record["noc85"] < record["noc85_before"]) == (candidate.refiner is not None)
