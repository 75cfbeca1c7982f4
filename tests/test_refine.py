"""From the consensus to the proposed mask: each refinement moves a mask onto the lesion the image shows, and the
recipe (binarisation, consensus rule, refinement) is chosen by IoU on lesion masks. Plain NumPy and OpenCV."""
import numpy as np
import pytest

from ml.config import AnnotateConfig
from ml.consensus import heatmap_binarize, proposal_mask
from ml.defaults import ScoredImage, mask_recipe_choose, recipe_iou
from ml.metrics import mask_iou
from ml.refine import refine

SIZE = (120, 160)  # height, width
DISC = ((60, 70), 22)  # centre (y, x) and radius of the dark lesion


def disc(centre, radius, shape=SIZE) -> np.ndarray:
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius ** 2


def ultrasound_like(seed=0) -> np.ndarray:
    """Speckled bright tissue with one dark round lesion, as BUSI's hypoechoic masses look."""
    rng = np.random.default_rng(seed)
    image = rng.normal(150, 25, SIZE)
    image[disc(*DISC)] = rng.normal(45, 12, disc(*DISC).sum())
    return np.clip(image, 0, 255).astype(np.uint8)


def offset_map(shift=(10, 14)) -> np.ndarray:
    """A saliency map like a CAM's: a smooth bump on the lesion, but off-centre and wider."""
    ys, xs = np.mgrid[:SIZE[0], :SIZE[1]]
    (cy, cx), radius = DISC
    bump = np.exp(-(((ys - cy - shift[0]) ** 2 + (xs - cx - shift[1]) ** 2) / (2 * (1.6 * radius) ** 2)))
    return (bump / bump.max()).astype(np.float32)


@pytest.mark.parametrize("method", ["grabcut", "ultrasound"])
def test_a_refinement_moves_an_offset_consensus_onto_the_dark_lesion(method):
    image, heatmap = ultrasound_like(), offset_map()
    consensus = heatmap > 0.5
    truth = disc(*DISC)
    refined = refine(method, image, heatmap, consensus)
    assert mask_iou(consensus, truth) < 0.6
    assert mask_iou(refined, truth) > mask_iou(consensus, truth) + 0.2, method
    assert mask_iou(refined, truth) > 0.75, method


@pytest.mark.parametrize("method", ["none", "grabcut", "ultrasound"])
def test_an_empty_consensus_stays_empty(method):
    empty = np.zeros(SIZE, dtype=bool)
    assert not refine(method, ultrasound_like(), offset_map(), empty).any()


def test_the_ultrasound_prior_keeps_the_consensus_when_no_dark_region_is_there():
    flat = np.full(SIZE, 140, dtype=np.uint8)
    consensus = offset_map() > 0.5
    assert np.array_equal(refine("ultrasound", flat, offset_map(), consensus), consensus)


def test_an_unknown_refinement_is_refused():
    with pytest.raises(ValueError, match="refine must be one of"):
        AnnotateConfig(refine="sam")


def test_the_proposal_is_refined_and_the_paper_s_intersection_is_kept_beside_it():
    image, heatmap = ultrasound_like(), offset_map()
    wide = np.clip(heatmap * 1.3, 0, 1)  # a second model agreeing, with a wider map
    config = AnnotateConfig(consensus="union", refine="ultrasound")
    maps = [heatmap, wide]
    masks = [heatmap_binarize(each, config) for each in maps]
    proposal, paper = proposal_mask(image, maps, masks, [1, 1], 1, [1], config)
    assert np.array_equal(paper, (heatmap > 0.5) & (wide > 0.5 * wide.max()))
    assert mask_iou(proposal, disc(*DISC)) > mask_iou(paper, disc(*DISC))
    healthy, _ = proposal_mask(image, maps, masks, [0, 0], 0, [1], config)
    assert not healthy.any()  # a healthy diagnosis proposes no mask


def test_the_recipe_with_the_best_iou_on_lesion_masks_is_chosen():
    scored = [ScoredImage(ultrasound_like(seed), [offset_map(), offset_map((-8, -6))], [1, 1], 1, disc(*DISC))
              for seed in range(3)]
    config, report = mask_recipe_choose(scored, [1], AnnotateConfig())
    best = max(report["candidates"], key=lambda row: row["proposal_iou"])
    assert (config.consensus, config.refine) == (best["consensus"], best["refine"])
    assert report["proposal_iou"] == pytest.approx(recipe_iou(scored, [1], config)[0], abs=1e-4)
    assert config.refine != "none" and report["proposal_iou"] > report["paper_iou"] + 0.1
    assert mask_recipe_choose([], [1], AnnotateConfig()) is None
