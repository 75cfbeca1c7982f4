"""The segmentation member: what each training image teaches it, that it learns, that the gate only lets it propose
where it beats the consensus, and that a checkpoint carries it into `annotate()`. Tiny inputs, no Django."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ml.config import IMAGENET_MEAN, IMAGENET_STD, AnnotateConfig, EnsembleManifest, SegmenterConfig
from ml.ensemble import annotate, ensemble_build, load_ensemble, save_ensemble
from ml.metrics import mask_iou
from ml.models import packaged_imagenet_weights
from ml.segment import (MIN_GATE_IMAGES, SegmentTrainConfig, approved_target, proposal_source_choose, pseudo_target,
                        segment_targets, segmenter_build, segmenter_loss, segmenter_probabilities, segmenter_train)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIDE = 96


def disc(centre, radius=15, side=SIDE) -> np.ndarray:
    ys, xs = np.mgrid[:side, :side]
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius ** 2


def dark_disc_image(lesion: np.ndarray) -> Image.Image:
    pixels = np.full(lesion.shape, 180, dtype=np.uint8)
    pixels[lesion] = 40
    return Image.fromarray(pixels)


def annotation_of(diagnosis: str, consensus: np.ndarray) -> SimpleNamespace:
    """An annotation whose proposal is a member's (empty here): pseudo-masks come from the panel's consensus."""
    return SimpleNamespace(diagnosis=diagnosis, consensus_mask=consensus, mask=np.zeros_like(consensus), flagged=True)


# --- What each image teaches -------------------------------------------------------------------------------------


def test_a_healthy_image_is_background_everywhere_whatever_the_panel_proposed():
    image = dark_disc_image(disc((48, 48)))
    target = pseudo_target(image, healthy=True, annotation=annotation_of("lesion", disc((48, 48))), label="normal")

    assert not target.mask.any() and (target.weight == 1).all() and not target.approved


def test_a_correctly_diagnosed_lesion_image_teaches_the_panels_consensus_with_the_outline_ignored():
    proposal = disc((48, 48), radius=20)
    target = pseudo_target(dark_disc_image(proposal), healthy=False, annotation=annotation_of("lesion", proposal),
                           label="lesion")

    assert np.array_equal(target.mask, proposal)
    assert target.weight[48, 48] == 1 and target.weight[2, 2] == 1  # deep inside and far outside
    assert target.weight[48, 48 + 20] == 0  # on the outline
    assert 0 < (target.weight == 0).mean() < 0.2


@pytest.mark.parametrize("diagnosis, proposal", [("normal", disc((48, 48))), ("lesion", np.zeros((SIDE, SIDE), bool))])
def test_a_lesion_image_diagnosed_wrongly_or_with_no_consensus_teaches_nothing(diagnosis, proposal):
    image = dark_disc_image(disc((48, 48)))
    assert pseudo_target(image, healthy=False, annotation=annotation_of(diagnosis, proposal), label="lesion") is None


def test_an_approved_mask_replaces_the_pseudo_mask_and_outweighs_it():
    lesion, wrong = disc((30, 30)), disc((70, 70))
    images = [dark_disc_image(lesion), dark_disc_image(lesion), dark_disc_image(lesion)]
    annotations = [annotation_of("lesion", wrong), annotation_of("lesion", wrong), annotation_of("normal", wrong)]

    targets = segment_targets(images, ["lesion", "lesion", "lesion"], annotations, {1: lesion}, "normal",
                              approved_weight=3.0, pseudo_masks_beside_approved=True)

    assert len(targets) == 2  # the misdiagnosed third image is left out
    assert np.array_equal(targets[0].mask, wrong) and not targets[0].approved
    assert np.array_equal(targets[1].mask, lesion) and targets[1].approved and (targets[1].weight == 3.0).all()


def test_once_a_mask_is_approved_lesion_images_without_one_wait_for_theirs_and_healthy_ones_still_teach():
    lesion, wrong = disc((30, 30)), disc((70, 70))
    images = [dark_disc_image(lesion), dark_disc_image(lesion), dark_disc_image(wrong)]
    annotations = [annotation_of("lesion", wrong), annotation_of("lesion", wrong), annotation_of("normal", wrong)]
    labels = ["lesion", "lesion", "normal"]

    targets = segment_targets(images, labels, annotations, {1: lesion}, "normal", approved_weight=3.0)
    before_any_approval = segment_targets(images, labels, annotations, {}, "normal", approved_weight=3.0)

    assert [(t.approved, bool(t.mask.any())) for t in targets] == [(True, True), (False, False)]
    assert np.array_equal(targets[0].mask, lesion)
    assert [(t.approved, bool(t.mask.any())) for t in before_any_approval] == [(False, True), (False, True),
                                                                               (False, False)]


def test_the_loss_ignores_pixels_of_weight_zero():
    target = torch.zeros(1, 1, 8, 8)
    weight = torch.ones(1, 1, 8, 8)
    weight[..., :4] = 0
    logits = torch.zeros(1, 1, 8, 8)
    changed = logits.clone()
    changed[..., :4] = 5.0  # confidently wrong, but only where nothing counts

    assert segmenter_loss(changed, target, weight) == pytest.approx(float(segmenter_loss(logits, target, weight)))
    assert segmenter_loss(logits + 5.0, target, weight) > segmenter_loss(logits, target, weight)


# --- Learning ----------------------------------------------------------------------------------------------------


def disc_targets(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lesions = [disc(tuple(rng.integers(25, 70, 2))) for _ in range(count)]
    return [approved_target(dark_disc_image(lesion), lesion, 1.0) for lesion in lesions]


@pytest.fixture(scope="module")
def trained_member(one_torch_thread):
    net = segmenter_build(SegmenterConfig(input_size=64), packaged_imagenet_weights("efficientnet_lite0"))
    losses = segmenter_train(net, disc_targets(16), SegmentTrainConfig(epochs=8, batch_size=8),
                             IMAGENET_MEAN, IMAGENET_STD)
    return net, losses


def test_the_member_trains_on_tiny_images_and_its_loss_falls(trained_member):
    _, losses = trained_member
    assert losses[-1] < 0.8 * losses[0]


def test_the_trained_member_finds_dark_discs_it_never_saw(trained_member):
    net, _ = trained_member
    unseen = disc_targets(4, seed=1)
    probs = segmenter_probabilities(net, [t.image for t in unseen], IMAGENET_MEAN, IMAGENET_STD)

    assert all(p.shape == (SIDE, SIDE) for p in probs)
    assert np.mean([mask_iou(p > 0.5, t.mask) for p, t in zip(probs, unseen)]) > 0.4


def test_frozen_encoder_batchnorm_keeps_the_imagenet_statistics_and_the_decoder_still_learns(one_torch_thread):
    net = segmenter_build(SegmenterConfig(input_size=64), packaged_imagenet_weights("efficientnet_lite0"))
    before = {name: tensor.clone() for name, tensor in net.state_dict().items() if "running_mean" in name}
    segmenter_train(net, disc_targets(4), SegmentTrainConfig(epochs=1, batch_size=4, freeze_encoder_batchnorm=True),
                    IMAGENET_MEAN, IMAGENET_STD)
    after = net.state_dict()
    changed = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}

    assert changed == {name for name in before if not name.startswith("encoder.")} != set()
    assert not net.training
    assert net.train().encoder.conv_stem.training and not net.encoder.bn1.training


# --- The gate ----------------------------------------------------------------------------------------------------


def test_the_gate_prefers_the_source_whose_masks_overlap_the_truth_better():
    truths = [disc((48, 48))] * MIN_GATE_IMAGES
    near, far = [disc((50, 50))] * MIN_GATE_IMAGES, [disc((20, 75))] * MIN_GATE_IMAGES

    assert proposal_source_choose(near, far, truths)[0] == "segmentation"
    source, report = proposal_source_choose(far, near, truths)
    assert source == "consensus" and report["consensus_iou"] > report["segmentation_iou"]


def test_the_gate_keeps_the_consensus_with_too_few_lesion_masks_to_judge():
    truths = [disc((48, 48))] * (MIN_GATE_IMAGES - 1) + [np.zeros((SIDE, SIDE), bool)] * 10
    perfect, empty = truths, [np.zeros((SIDE, SIDE), bool)] * len(truths)

    source, report = proposal_source_choose(perfect, empty, truths)
    assert source == "consensus" and report["images"] == MIN_GATE_IMAGES - 1


# --- In a checkpoint ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble_with_member(trained_member, tmp_path_factory):
    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=64, annotate=AnnotateConfig(mc_samples=3, proposal="segmentation"),
                                segmenter=SegmenterConfig(input_size=64))
    ensemble = ensemble_build(manifest)
    ensemble.segmenter = trained_member[0]
    folder = save_ensemble(ensemble, tmp_path_factory.mktemp("with_member"))
    return load_ensemble(folder, device="cpu")


@contextmanager
def diagnosing(ensemble, label: str):
    """Every image gets `label` from the panel's one model, through its classifier's bias."""
    classifier = ensemble.models["resnet18"].get_classifier()
    saved = classifier.bias.detach().clone()
    with torch.no_grad():
        classifier.bias.copy_(torch.tensor([50.0, -50.0] if label == "normal" else [-50.0, 50.0]))
    try:
        yield
    finally:
        with torch.no_grad():
            classifier.bias.copy_(saved)


def test_a_checkpoint_carries_the_member_and_annotate_proposes_its_mask(ensemble_with_member, trained_member):
    image = disc_targets(1, seed=2)[0].image
    with diagnosing(ensemble_with_member, "lesion"):
        [result] = annotate(ensemble_with_member, [image])
        consensus_config = replace(ensemble_with_member.manifest.annotate, proposal="consensus")
        [by_consensus] = annotate(ensemble_with_member, [image], consensus_config)
    expected = segmenter_probabilities(trained_member[0], [image], IMAGENET_MEAN, IMAGENET_STD)[0] > 0.5

    assert ensemble_with_member.manifest.segmenter == SegmenterConfig(input_size=64)
    assert expected.any()
    assert np.array_equal(result.segmentation_mask, expected) and np.array_equal(result.mask, expected)
    assert np.array_equal(by_consensus.mask, by_consensus.consensus_mask)
    assert np.array_equal(by_consensus.segmentation_mask, expected)


def test_a_member_mask_is_empty_when_the_panel_says_healthy(ensemble_with_member):
    with diagnosing(ensemble_with_member, "normal"):
        [result] = annotate(ensemble_with_member, [disc_targets(1, seed=2)[0].image])
    assert result.diagnosis == "normal" and not result.mask.any() and not result.segmentation_mask.any()


def test_proposing_the_member_mask_without_a_member_is_refused():
    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=64, annotate=AnnotateConfig(mc_samples=2, proposal="segmentation"))
    with pytest.raises(ValueError, match="segmentation member"):
        annotate(ensemble_build(manifest), [dark_disc_image(disc((48, 48)))])
