"""The batched XGrad-CAM and the fast annotate() against pytorch-grad-cam's reference: plain PyTorch, no Django."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ml.cam import BatchedXGradCam
from ml.config import AnnotateConfig, EnsembleManifest
from ml.data import images_to_tensor
from ml.ensemble import _resize_map, annotate, ensemble_build
from ml.models import model_classifier, model_target_layer
from ml.uncertainty import mc_dropout_probs
from tests.ml_reference import XGradCamExplainer, model_pooled_features

PANEL = ["resnet50", "efficientnet_b0", "densenet121"]
CLASSES = ["normal", "benign", "malignant"]
CONFIG = AnnotateConfig(mc_samples=5, dropout=0.3)
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Two noise images of sizes other than the input size, so heatmaps are resized back to each image's own."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            for height, width in [(120, 150), (130, 90)]]


@pytest.fixture(scope="module")
def panel(images):
    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=PANEL, classes=CLASSES, healthy_class="normal", input_size=112,
                                annotate=CONFIG)
    ensemble = ensemble_build(manifest)
    batch = images_to_tensor(images, manifest)
    for model in ensemble.models.values():
        _contrasting_head(model.eval(), batch)
    return ensemble


def _contrasting_head(model, images: torch.Tensor) -> None:
    """Classifier rows whose evidence changes sign across each map.

    Random rows mostly give evidence of one sign everywhere, so that after XGrad-CAM's ReLU the map is flat and any
    two implementations agree on it. Rows orthogonal to the mean activation of the target layer do not.
    """
    captured = []
    handle = model_target_layer(model).register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        model(images)
        handle.remove()
        mean = captured[0].mean((0, 2, 3))
        weight = torch.randn_like(model_classifier(model).weight)
        weight -= (weight @ mean)[:, None] * mean / mean.dot(mean)
        model_classifier(model).weight.copy_(weight)


def _assert_not_flat(maps: np.ndarray) -> None:
    assert (maps.reshape(len(maps), -1).std(1) > 0.05).all(), "flat maps would agree whatever the implementation"


@pytest.mark.parametrize("arch", PANEL)
def test_batched_xgradcam_equals_pytorch_grad_cam_with_a_different_class_per_image(arch, panel, images):
    model = panel.models[arch]
    batch = images_to_tensor(images, panel.manifest)
    target_classes = [2, 1]

    batched = BatchedXGradCam(model)(batch, target_classes).numpy()
    reference = XGradCamExplainer(model)(batch, target_classes)

    _assert_not_flat(reference)
    assert batched.shape == reference.shape == (2, 112, 112)
    assert np.abs(batched - reference).max() <= TOLERANCE


def test_annotate_heatmaps_and_mc_samples_equal_the_reference_on_the_same_batch(panel, images):
    results = annotate(panel, images, CONFIG, seed=7)

    batch = images_to_tensor(images, panel.manifest)
    cam_classes = [CLASSES.index(result.cam_class) for result in results]
    generator = torch.Generator().manual_seed(7)
    for index, (arch, model) in enumerate(panel.models.items()):
        with torch.no_grad():
            samples = mc_dropout_probs(model_classifier(model), model_pooled_features(model, batch),
                                       CONFIG.mc_samples, CONFIG.dropout, generator)
        reference = XGradCamExplainer(model)(batch, cam_classes)
        for i, (image, result) in enumerate(zip(images, results)):
            opinion = result.opinions[index]
            expected = _resize_map(reference[i], image.size)
            _assert_not_flat(expected[None])
            assert opinion.heatmap.shape == expected.shape == (image.height, image.width)
            assert np.abs(opinion.heatmap - expected).max() <= TOLERANCE, arch
            np.testing.assert_allclose(opinion.probabilities, samples.mean(0)[i].numpy(), atol=1e-6)
            np.testing.assert_allclose(opinion.std, samples[:, i].std(0).numpy(), atol=1e-6)


def test_annotate_leaves_no_hooks_no_parameter_gradients_and_every_parameter_trainable(panel, images):
    for model in panel.models.values():
        model.zero_grad(set_to_none=True)  # the reference explainer of other tests fills .grad

    annotate(panel, images, CONFIG)

    for arch, model in panel.models.items():
        for module in model.modules():
            hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                     module._backward_pre_hooks)
            assert not any(hooks), f"{arch}: hook left on {type(module).__name__}"
        assert all(parameter.grad is None for parameter in model.parameters()), arch
        assert all(parameter.requires_grad for parameter in model.parameters()), arch
