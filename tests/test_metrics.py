"""ml.metrics against hand-computed values, and the library calls that replaced plain formulas pinned to them.

The reference functions below are the formulas `ml.metrics` and `ml.split` used before they called scikit-learn and
SciPy; each is compared with its replacement on a few hundred seeded random inputs and the edge cases.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from ml.metrics import (accuracy, auroc, balanced_accuracy, boxes_mask, expected_calibration_error, mask_dice, mask_iou,
                        pointing_hit, reliability_bins)
from ml.split import near_duplicate_groups, split_grouped_stratified

CASES = 300


# --- Classification -----------------------------------------------------------------------------------------------


def test_accuracy_and_balanced_accuracy_by_hand():
    truth = [0, 0, 0, 0, 1, 1]
    predicted = [0, 0, 0, 0, 0, 1]

    assert accuracy(truth, predicted) == pytest.approx(5 / 6)
    assert balanced_accuracy(truth, predicted) == pytest.approx((1.0 + 0.5) / 2)


def test_auroc_counts_ties_as_half_by_hand():
    # Pairs (positive, negative): 0.9>0.5, 0.9>0.4, 0.4<0.5, 0.4=0.4 -> (1 + 1 + 0 + 0.5) / 4
    assert auroc([True, True, False, False], [0.9, 0.4, 0.5, 0.4]) == pytest.approx(0.625)


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


def test_pointing_at_a_flat_heatmap_takes_its_first_pixel():
    corner = np.zeros((4, 4), dtype=bool)
    corner[0, 0] = True

    assert pointing_hit(np.full((4, 4), 0.5), corner)
    assert not pointing_hit(np.full((4, 4), 0.5), ~corner)


# --- The library calls pinned to the formulas they replaced -------------------------------------------------------


def accuracy_reference(truth, predicted) -> float:
    return float(np.mean(np.asarray(truth) == np.asarray(predicted)))


def balanced_accuracy_reference(truth, predicted) -> float:
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return float(np.mean([np.mean(predicted[truth == c] == c) for c in np.unique(truth)]))


def auroc_reference(positive, scores) -> float | None:
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)
    negatives = np.sort(scores[~positive])
    positives = scores[positive]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    below = np.searchsorted(negatives, positives, side="left")
    below_or_tied = np.searchsorted(negatives, positives, side="right")
    return float((below + below_or_tied).sum() / 2 / (len(positives) * len(negatives)))


def near_duplicate_groups_reference(hashes: list[np.ndarray], max_distance: int) -> list[int]:
    bits = np.stack(hashes)
    parent = list(range(len(hashes)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes)):
        distances = (bits[i + 1:] != bits[i]).sum(axis=1)
        for j in np.flatnonzero(distances <= max_distance) + i + 1:
            parent[root(int(j))] = root(i)
    return [root(i) for i in range(len(hashes))]


def _labelled_cases(rng):
    """Truth and prediction of a few classes, sometimes with a class that only one of them holds."""
    for _ in range(CASES):
        size, classes = int(rng.integers(1, 60)), int(rng.integers(1, 5))
        yield rng.integers(0, classes, size), rng.integers(0, classes + int(rng.integers(0, 2)), size)
    yield [1, 1, 1], [0, 1, 2]  # predicted classes absent from the truth
    yield [0, 1, 2], [0, 0, 0]  # true classes never predicted
    yield [3], [3]


def test_accuracy_and_balanced_accuracy_are_the_formulas_they_replaced():
    for truth, predicted in _labelled_cases(np.random.default_rng(0)):
        assert accuracy(truth, predicted) == accuracy_reference(truth, predicted)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # as before, a class only predicted is no cause for a warning
            assert balanced_accuracy(truth, predicted) == balanced_accuracy_reference(truth, predicted)


def test_auroc_is_the_formula_it_replaced_with_ties_and_without_a_group():
    rng = np.random.default_rng(1)
    cases = [(rng.random(size) < rng.random(), np.round(rng.random(size), int(rng.integers(0, 4))))
             for size in rng.integers(1, 80, CASES)]  # rounding to 0-3 decimals makes ties
    cases += [([True, False, True, False], [0.5] * 4), ([True], [0.3]), ([False, False], [0.1, 0.2]), ([], [])]
    for positive, scores in cases:
        expected = auroc_reference(positive, scores)
        if expected is None:
            assert auroc(positive, scores) is None
        else:  # roc_auc_score sums trapezoids, the formula counted pairs: they part in the last bit at most
            assert auroc(positive, scores) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def _hashes(rng, count: int, bits: int, max_distance: int) -> list[np.ndarray]:
    """Random hashes, many of them copies of an earlier one with up to twice `max_distance` bits flipped."""
    hashes = []
    for _ in range(count):
        if hashes and rng.random() < 0.7:
            copy = hashes[int(rng.integers(len(hashes)))].copy()
            copy[rng.permutation(bits)[:int(rng.integers(0, 2 * max_distance + 2))]] ^= True
            hashes.append(copy)
        else:
            hashes.append(rng.random(bits) < 0.5)
    return hashes


def _partition(groups: list[int]) -> list[int]:
    """The groups renumbered by first appearance: equal exactly when two labellings partition alike."""
    first = {}
    return [first.setdefault(group, len(first)) for group in groups]


def test_near_duplicate_groups_partition_the_images_as_the_union_find_did():
    rng = np.random.default_rng(2)
    for _ in range(CASES):
        max_distance = int(rng.integers(0, 12))
        hashes = _hashes(rng, int(rng.integers(1, 40)), 64, max_distance)
        assert _partition(near_duplicate_groups(hashes, max_distance)) == _partition(
            near_duplicate_groups_reference(hashes, max_distance))
    same = [np.zeros(256, dtype=bool)] * 3
    assert len(set(near_duplicate_groups(same, 0))) == 1


def test_near_duplicate_groups_give_the_splits_the_union_find_gave():
    rng = np.random.default_rng(3)
    hashes = _hashes(rng, 200, 256, 30)
    labels = [int(label) for label in rng.integers(0, 3, len(hashes))]
    groups, reference = near_duplicate_groups(hashes, 30), near_duplicate_groups_reference(hashes, 30)
    assert len(set(groups)) < len(hashes)  # some images were grouped
    for seed in range(5):
        assert split_grouped_stratified(labels, groups, 0.2, seed) == split_grouped_stratified(
            labels, reference, 0.2, seed)
