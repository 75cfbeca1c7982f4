"""Fine-tuning from reviews: the CAM loss, the held-out gate, runs in the worker (progress, cancel, restart),
model versions with rollback, re-annotation of pending images, and who may do what."""
import csv
import dataclasses
import hashlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from django.utils import timezone
from PIL import Image as PILImage

from annotator.annotation import services
from annotator.finetune import services as training
from annotator.masks.services import mask_create
from annotator.models import Mask, ModelVersion, Prediction, TrainingRun
from annotator.tasks import project_reannotate_task, training_run_task
from ml.cam import BatchedXGradCam, _min_max_scale
from ml.config import DEFAULT_ARCHITECTURES, EnsembleManifest, SegmenterConfig
from ml.ensemble import ensemble_build, load_ensemble, save_ensemble
from ml.finetune import (FinetuneConfig, FinetuneSample, cam_mask_loss, class_activation_maps, finetune, held_out,
                         promotion_decide)
from ml.models import model_build, model_classifier
from ml.segment import MIN_GATE_IMAGES
from review.services import image_approve, image_reject
from tests.conftest import DEMO_BUSI
from tests.factories import annotated_image, box_mask

PANEL = ["resnet18", "efficientnet_lite0", "densenet121"]
INPUT_SIZE = 64  # 2x2 feature maps: the smallest size at which a CAM has a "where"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_ensemble_folder(tmp_path_factory):
    torch.manual_seed(0)
    manifest = EnsembleManifest(architectures=PANEL, classes=["normal", "lesion"], healthy_class="normal",
                                input_size=INPUT_SIZE)
    return save_ensemble(ensemble_build(manifest), tmp_path_factory.mktemp("ensemble"))


@pytest.fixture
def finetuning(tiny_ensemble_folder, settings, tmp_path):
    """The tiny ensemble as the built-in default, versions under a fresh MODELS_DIR, one short epoch."""
    settings.ENSEMBLE_DIR = tiny_ensemble_folder
    settings.MODELS_DIR = tmp_path / "models"
    settings.ML_MC_SAMPLES = 2
    settings.FINETUNE_EPOCHS = 1
    settings.FINETUNE_SEGMENTER_EPOCHS = 1
    settings.FINETUNE_VALIDATION_PERCENT = 50  # of the ten images below: 2 normal and 3 lesion held out
    settings.FINETUNE_EVERY_APPROVALS = 0
    services.ensemble_load.cache_clear()
    yield settings
    services.ensemble_load.cache_clear()


def demo_rows(per_label=5):
    rows = list(csv.DictReader((DEMO_BUSI / "images" / "labels.csv").open()))
    return ([r for r in rows if r["label"] == "normal"][:per_label]
            + [r for r in rows if r["label"] == "lesion"][:per_label])


def demo_mask(filename) -> np.ndarray:
    return np.asarray(PILImage.open(DEMO_BUSI / "masks" / filename).convert("L")) > 0


def approved_demo_images(team, per_label=5):
    """Real BUSI scans, approved: a lesion with the radiologist's outline (the real mask drawn over the model's box),
    a normal scan with the diagnosis corrected to normal."""
    images = []
    for row in demo_rows(per_label):
        image = annotated_image(team.project, row["filename"], picture=DEMO_BUSI / "images" / row["filename"])
        if row["label"] == "lesion":
            drawn = mask_create(image, demo_mask(row["filename"]), Mask.Source.HUMAN,
                                         author=team.radiologist, parent=image.masks.get())
            image_approve(image, team.radiologist, mask=drawn)
        else:
            image_approve(image, team.radiologist, label="normal")
        images.append(image)
    return images


def files_under(folder: Path) -> list[Path]:
    return [path.relative_to(folder) for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def samples_of(rows, with_masks=True):
    samples = []
    for row in rows:
        path = DEMO_BUSI / "images" / row["filename"]
        samples.append(FinetuneSample(key=hashlib.sha256(path.read_bytes()).hexdigest(), image=PILImage.open(path),
                                      label=row["label"], mask=demo_mask(row["filename"]) if with_masks else None))
    return samples


# --- The CAM loss and the gate, on numbers ------------------------------------------------------------------------


def test_cam_loss_is_zero_where_the_map_is_the_mask_one_where_they_are_apart_and_it_has_gradients():
    lesion = torch.zeros(1, 16, 16)
    lesion[0, :8, :8] = 1  # the top-left quarter, which is cell (0, 0) of a 2x2 feature map
    features = torch.zeros(1, 3, 2, 2)
    features[0, 0, 0, 0] = 5.0  # channel 0 fires on the lesion's cell
    features[0, 1, 1, 1] = 5.0  # channel 1 fires elsewhere
    toward_channel = lambda k: F.one_hot(torch.tensor([k]), 3).float().repeat(2, 1)  # both classes read channel k

    assert cam_mask_loss(features, toward_channel(0), torch.tensor([1]), lesion).item() == pytest.approx(0, abs=1e-5)
    assert cam_mask_loss(features, toward_channel(1), torch.tensor([1]), lesion).item() == pytest.approx(1, abs=1e-5)
    # Only the class asked for counts: class 0 reads channel 1, class 1 channel 0.
    weights = torch.stack([toward_channel(1)[0], toward_channel(0)[0]])
    assert cam_mask_loss(features, weights, torch.tensor([1]), lesion).item() == pytest.approx(0, abs=1e-5)

    torch.manual_seed(0)
    features = torch.rand(2, 3, 2, 2, requires_grad=True)
    weights = torch.rand(2, 3, requires_grad=True)  # positive, so the class map is not all clipped away by ReLU
    loss = cam_mask_loss(features, weights, torch.tensor([1, 1]), torch.stack([lesion[0], lesion[0]]))
    loss.backward()
    assert 0 < loss.item() < 1 and features.grad.abs().sum() > 0 and weights.grad[1].abs().sum() > 0
    assert weights.grad[0].abs().sum() == 0


@pytest.mark.parametrize("arch", DEFAULT_ARCHITECTURES)
def test_xgradcam_of_each_member_is_its_class_activation_map(arch):
    """What the CAM loss trains is what the reviewers see: for a GAP + linear head XGrad-CAM is Σ_k w_ck A_k."""
    torch.manual_seed(0)
    model = model_build(arch, num_classes=2, dropout=0.3).eval()
    images = torch.randn(3, 3, INPUT_SIZE, INPUT_SIZE)
    classes = [1, 0, 1]
    shown = BatchedXGradCam(model)(images, classes)
    with torch.no_grad():
        maps = class_activation_maps(model.forward_features(images), model_classifier(model).weight,
                                     torch.tensor(classes))
    trained = _min_max_scale(F.interpolate(_min_max_scale(maps)[:, None], size=(INPUT_SIZE, INPUT_SIZE),
                                           mode="bilinear", align_corners=False)[:, 0])
    assert shown.std() > 0.05, "flat heatmaps would make the comparison meaningless"
    assert torch.allclose(shown, trained, atol=1e-3)


def test_held_out_is_a_fixed_share_by_content_hash():
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    assert held_out("00000013" + "0" * 56, 20) and not held_out("00000014" + "0" * 56, 20)  # 19 and 20 mod 100
    assert not any(held_out(key, 0) for key in keys)
    assert np.mean([held_out(key, 20) for key in keys]) == pytest.approx(0.2, abs=0.03)


def scores(balanced, iou, normal=3, lesion=3):
    return {"images": normal + lesion, "images_per_class": {"normal": normal, "lesion": lesion},
            "balanced_accuracy": balanced, "iou": iou}


@pytest.mark.parametrize("candidate, current, promoted, reason", [
    (scores(0.8, 0.3), scores(0.8, 0.3), True, "not worse"),
    (scores(0.9, 0.35), scores(0.8, 0.3), True, "balanced accuracy 90.0% vs 80.0%, mask IoU 35.0% vs 30.0%"),
    (scores(0.79, 0.5), scores(0.8, 0.3), False, "balanced accuracy 79.0% < 80.0%"),
    (scores(0.9, 0.29), scores(0.8, 0.3), False, "mask IoU 29.0% < 30.0%"),
    (scores(0.9, None), scores(0.8, None), True, "IoU was not compared"),
    (scores(1.0, 0.9, normal=1), scores(0.5, 0.1, normal=1), False, "too few held-out images"),
])
def test_promotion_gate_promotes_only_a_candidate_not_worse_on_enough_images(candidate, current, promoted, reason):
    decided, decision = promotion_decide(candidate, current, min_per_class=2)
    assert decided is promoted and reason in decision
    assert decision.startswith("Promoted" if promoted else "Not promoted")


# --- ml.finetune on real scans --------------------------------------------------------------------------------------


def test_finetune_trains_the_cam_toward_masks_only_when_there_are_masks(tiny_ensemble_folder, tmp_path):
    rows = demo_rows(4)
    config = FinetuneConfig(epochs=1, validation_percent=25, mc_samples=2, segmenter_epochs=0, parent_version="tiny")
    with_masks = finetune(tiny_ensemble_folder, samples_of(rows), tmp_path / "masks", config)
    unweighted = finetune(tiny_ensemble_folder, samples_of(rows), tmp_path / "unweighted",
                          dataclasses.replace(config, cam_weight=0.0))
    labels_only = finetune(tiny_ensemble_folder, samples_of(rows, with_masks=False), tmp_path / "labels", config)

    held = [held_out(sample.key, 25) for sample in samples_of(rows)]
    assert (with_masks.train_images, with_masks.validation_images) == (held.count(False), held.count(True))
    lesions_trained = sum(not h and row["label"] == "lesion" for h, row in zip(held, rows))
    assert with_masks.masks_used == lesions_trained > 0 and labels_only.masks_used == 0
    assert all(value > 0 for value in with_masks.cam_loss.values())
    assert all(value == 0 for value in labels_only.cam_loss.values())
    # The same data, seed and draws: only the CAM term's gradient can set these weights apart.
    trained, untrained = load_ensemble(tmp_path / "masks"), load_ensemble(tmp_path / "unweighted")
    assert any(not torch.equal(a, b) for arch in PANEL
               for a, b in zip(trained.models[arch].state_dict().values(),
                               untrained.models[arch].state_dict().values()))
    training_record = trained.manifest.training
    assert training_record["finetuned_from"] == "tiny" and training_record["cam_weight"] == config.cam_weight > 0
    assert training_record["epochs"] == 1 and len(training_record["data_sha256"]) == 64
    assert trained.manifest.metrics["held_out"] == with_masks.metrics
    assert with_masks.metrics["images"] == held.count(True)


def test_finetune_trains_a_segmentation_member_on_the_approved_masks_and_the_gate_judges_it(tiny_ensemble_folder,
                                                                                           tmp_path, monkeypatch):
    rows = demo_rows(8)
    config = FinetuneConfig(epochs=1, validation_percent=40, mc_samples=2, segmenter_epochs=2, parent_version="tiny")
    result = finetune(tiny_ensemble_folder, samples_of(rows), tmp_path / "member", config)

    held = [held_out(sample.key, 40) for sample in samples_of(rows)]
    held_lesions = sum(h and row["label"] == "lesion" for h, row in zip(held, rows))
    record = result.manifest.training["segmenter"]
    assert record["trained"] and record["approved_masks"] == record["targets"] == held.count(False)
    assert record["gate"]["images"] == held_lesions < MIN_GATE_IMAGES  # too few to judge on (the gate's own tests
    assert record["proposal"] == "consensus" and "fewer than" in record["gate"]["reason"]  # are in test_segment)
    loaded = load_ensemble(tmp_path / "member")
    assert loaded.segmenter is not None and loaded.manifest.segmenter == SegmenterConfig()
    assert loaded.manifest.annotate.proposal == record["proposal"]

    # The next run trains this member further: it builds no new one.
    monkeypatch.setattr("ml.finetune.segmenter_build", lambda *args: pytest.fail("a new member was built"))
    again = finetune(tmp_path / "member", samples_of(rows), tmp_path / "again", config)
    assert again.manifest.training["segmenter"]["trained"]
    child = load_ensemble(tmp_path / "again").segmenter.state_dict()
    assert any(not torch.equal(value, child[key]) for key, value in loaded.segmenter.state_dict().items())


# --- Runs in the worker -------------------------------------------------------------------------------------------


def test_a_run_fine_tunes_the_default_into_a_version_that_loads_and_is_judged_on_held_out_images(team, finetuning):
    approved_demo_images(team)
    run = training.training_run_start(team.project, team.admin)
    training_run_task.apply(args=[run.pk]).get()

    run.refresh_from_db()
    version = ModelVersion.objects.get(project=team.project)
    assert (run.status, run.progress, run.attempt, run.result) == ("done", 1.0, 1, version)
    assert run.images_used == 5 and run.masks_used == 2  # held out: 2 normal, 3 lesion; trained: 3 normal, 2 lesion
    assert version.folder == str(finetuning.MODELS_DIR / f"project-{team.project.pk}" / f"finetune-{run.pk}")
    loaded = load_ensemble(version.folder)
    assert loaded.manifest.training["finetuned_from"] == services.folder_version(finetuning.ENSEMBLE_DIR)
    assert version.manifest["training"]["data_sha256"] == loaded.manifest.training["data_sha256"]
    assert version.metrics["images_per_class"] == {"normal": 2, "lesion": 3}
    assert version.metrics["images_with_mask"] == 3 and version.compared_metrics["images"] == 5
    promoted, decision = promotion_decide(version.metrics, version.compared_metrics, 2)
    assert (version.status == "promoted") is promoted and version.decision == decision == run.message
    team.project.refresh_from_db()
    assert team.project.model_version == (version if promoted else None)
    version_folder = Path(version.folder).relative_to(finetuning.MODELS_DIR)
    assert {path.parent for path in files_under(finetuning.MODELS_DIR)} == {version_folder}  # nothing half-written


def test_a_promoted_version_reannotates_pending_images_without_burying_drawings(team, finetuning, monkeypatch,
                                                                                 django_capture_on_commit_callbacks):
    approved_demo_images(team)
    untouched = annotated_image(team.project, "model-mask.png")
    drawn_on = annotated_image(team.project, "drawn-on.png")
    mask_create(drawn_on, box_mask((40, 30), (1, 1, 9, 9)), Mask.Source.HUMAN, author=team.radiologist,
                         parent=drawn_on.masks.get())
    rejected = image_reject(annotated_image(team.project, "rejected.png"), team.radiologist)
    monkeypatch.setattr("ml.finetune.promotion_decide", lambda *args: (True, "Promoted: forced by the test."))
    run = training.training_run_start(team.project, team.admin)
    with django_capture_on_commit_callbacks() as callbacks:
        training_run_task.apply(args=[run.pk]).get()
    version = ModelVersion.objects.get(project=team.project)
    team.project.refresh_from_db()
    assert version.status == "promoted" and team.project.model_version == version and len(callbacks) == 1

    project_reannotate_task.apply(args=[team.project.pk]).get()
    for image in (untouched, drawn_on):
        image.refresh_from_db()
        assert image.model_version == version.name
        assert image.predictions.filter(model_version=version.name).count() == 3
        assert image.predictions.filter(model_version="test@0").count() == 3  # the earlier ones stay
    newest = untouched.masks.order_by("-version").first()
    assert (newest.version, newest.source, newest.model_version, newest.parent.version) == (2, "model", version.name, 1)
    assert list(drawn_on.masks.values_list("version", "source")) == [(1, "model"), (2, "human")]
    rejected.refresh_from_db()
    assert rejected.model_version == "test@0" and rejected.masks.count() == 1
    assert not Prediction.objects.filter(image__review_status="approved", model_version=version.name).exists()
    masks = Mask.objects.count()
    assert services.project_reannotate(team.project.pk) == 0 and Mask.objects.count() == masks  # idempotent

    # Back to the built-in default: its own earlier predictions are kept, the verdict and a model mask come back.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        training.model_version_rollback(team.project, None, team.admin)
    assert len(callbacks) == 1
    default_name = services.folder_version(finetuning.ENSEMBLE_DIR)
    for prediction, arch in zip(untouched.predictions.filter(model_version="test@0"), PANEL):
        # As if the default had annotated it first: its predictions of that version exist already.
        Prediction.objects.filter(pk=prediction.pk).update(architecture=arch, model_version=default_name)
    services.project_reannotate(team.project.pk)
    untouched.refresh_from_db()
    assert untouched.model_version == default_name and untouched.predictions.count() == 6
    assert untouched.masks.order_by("-version").first().model_version == default_name


def test_cancelling_mid_run_keeps_nothing(team, finetuning, monkeypatch):
    approved_demo_images(team)
    run = training.training_run_start(team.project, team.admin)
    progress = training._progress

    def cancel_at_first_batch(run_id, attempt, fraction, message):
        progress(run_id, attempt, fraction, message)
        if "batch" in message:
            training.training_run_cancel(TrainingRun.objects.get(pk=run_id))

    monkeypatch.setattr(training, "_progress", cancel_at_first_batch)
    training_run_task.apply(args=[run.pk]).get()
    run.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_requested and run.progress < 0.5 and run.result is None
    assert not ModelVersion.objects.exists() and files_under(finetuning.MODELS_DIR) == []
    with pytest.raises(training.TrainingError, match="cancelled: nothing to cancel"):
        training.training_run_cancel(run)


def test_a_queued_run_cancelled_never_starts(team, finetuning):
    approved_demo_images(team, per_label=1)
    run = training.training_run_cancel(training.training_run_start(team.project, team.admin))
    assert run.status == "cancelled"
    training_run_task.apply(args=[run.pk]).get()
    run.refresh_from_db()
    assert (run.status, run.attempt) == ("cancelled", 0)


def test_a_run_found_running_after_its_worker_died_starts_again_cleanly(team, finetuning):
    approved_demo_images(team)
    run = training.training_run_start(team.project, team.admin)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", attempt=1, progress=0.4,
                                                 heartbeat_at=timezone.now() - timedelta(minutes=10))
    stale = training._partial_folder(run.pk, 1)
    stale.mkdir(parents=True)
    (stale / "resnet18.safetensors").write_bytes(b"half written")

    training_run_task.apply(args=[run.pk]).get()  # the message redelivered after the worker was lost
    run.refresh_from_db()
    assert (run.status, run.attempt, run.progress) == ("done", 2, 1.0)
    assert not stale.exists() and load_ensemble(run.result.folder)


def test_a_run_whose_worker_still_beats_is_left_to_it_and_a_finished_one_is_left_alone(team, finetuning,
                                                                                        monkeypatch):
    approved_demo_images(team, per_label=1)
    run = training.training_run_start(team.project, team.admin)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", attempt=1, heartbeat_at=timezone.now())
    resent = []
    monkeypatch.setattr(training_run_task, "apply_async", lambda **options: resent.append(options))
    training_run_task.apply(args=[run.pk]).get()
    assert resent == [{"args": [run.pk], "countdown": training.HEARTBEAT_STALE.total_seconds()}]
    assert TrainingRun.objects.get(pk=run.pk).attempt == 1

    TrainingRun.objects.filter(pk=run.pk).update(status="done")
    training_run_task.apply(args=[run.pk]).get()
    assert TrainingRun.objects.get(pk=run.pk).attempt == 1 and not resent[1:]


def test_unfinished_runs_are_sent_again(team, finetuning, django_capture_on_commit_callbacks):
    approved_demo_images(team, per_label=1)
    run = training.training_run_start(team.project, team.admin)
    TrainingRun.objects.create(project=team.project, status="done")
    with django_capture_on_commit_callbacks() as callbacks:
        assert training.training_runs_requeue_unfinished() == 1
    assert len(callbacks) == 1 and TrainingRun.objects.get(pk=run.pk).status == "queued"


def test_a_run_starts_by_itself_every_n_approvals_and_never_twice_at_once(team, finetuning, monkeypatch,
                                                                          django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(training_run_task, "delay", sent.append)
    images = [annotated_image(team.project, f"scan{i}.png") for i in range(5)]

    def approve(image):
        with django_capture_on_commit_callbacks(execute=True):
            image_approve(image, team.radiologist)

    approve(images[0])  # automatic fine-tuning is off: FINETUNE_EVERY_APPROVALS = 0
    finetuning.FINETUNE_EVERY_APPROVALS = 2
    approve(images[1])
    run = TrainingRun.objects.get()
    assert (run.trigger, run.created_by, sent) == ("auto", None, [run.pk])
    approve(images[2])
    approve(images[3])  # two approvals since the run was created, but it is still queued
    assert TrainingRun.objects.count() == 1 and sent == [run.pk]
    TrainingRun.objects.filter(pk=run.pk).update(status="done")
    approve(images[4])  # the approvals made while it was queued count toward the next one
    assert TrainingRun.objects.count() == 2 and len(sent) == 2


# --- Versions, rollback, the page and the API ---------------------------------------------------------------------


@pytest.fixture
def versions(team, finetuning):
    """Two promoted versions (the newer in use) and one that was not promoted, all with a loadable folder."""
    made = {}
    for name, status in (("finetune-1", "promoted"), ("finetune-2", "promoted"), ("finetune-3", "not_promoted")):
        made[name] = ModelVersion.objects.create(
            project=team.project, name=name, folder=str(finetuning.ENSEMBLE_DIR), status=status,
            decision=f"{name} decided", metrics={"balanced_accuracy": 0.75, "accuracy": 0.8, "iou": 0.25, "images": 6},
            compared_metrics={"balanced_accuracy": 0.7, "accuracy": 0.8, "iou": None, "images": 6})
    team.project.model_version = made["finetune-2"]
    team.project.save()
    return made


def test_rollback_to_an_earlier_promoted_version_or_the_default_but_not_to_a_refused_one(
        team, versions, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        assert training.model_version_rollback(team.project, versions["finetune-1"]).model_version == \
            versions["finetune-1"]
    assert len(callbacks) == 1  # pending images are annotated again with it
    with pytest.raises(training.TrainingError, match="not promoted"):
        training.model_version_rollback(team.project, versions["finetune-3"])
    with pytest.raises(training.TrainingError, match="in use already"):
        training.model_version_rollback(team.project, versions["finetune-1"])
    assert training.model_version_rollback(team.project, None).model_version is None

    api = team.api(team.admin)
    response = api.post(f"/api/model-versions/{versions['finetune-2'].pk}/rollback/")
    assert response.status_code == 200 and response.json()["model_version"]["name"] == "finetune-2"
    assert response.json()["model_version"]["in_use"] is True
    assert api.post(f"/api/model-versions/{versions['finetune-3'].pk}/rollback/").status_code == 400
    response = api.post(f"/api/projects/{team.project.pk}/model-versions/default/rollback/")
    assert response.status_code == 200 and response.json()["model_version"] is None
    response = team.client(team.admin).post(
        f"/projects/{team.project.pk}/models/{versions['finetune-1'].pk}/rollback/")
    assert response.status_code == 302
    team.project.refresh_from_db()
    assert team.project.model_version == versions["finetune-1"]


def test_the_models_page_compares_versions_and_offers_rollback_fine_tuning_and_cancel(team, versions):
    approved_demo_images(team, per_label=1)
    run = training.training_run_start(team.project, team.admin)
    page = team.client(team.admin).get(f"/projects/{team.project.pk}/models/").content.decode()
    assert "finetune-3 decided" in page and "75.0 %" in page and "70.0 %" in page
    assert page.count("Roll back to this") == 2  # finetune-1 and the default; finetune-2 is in use
    assert f"/projects/{team.project.pk}/models/runs/{run.pk}/cancel/" in page
    assert f'data-poll-url="/api/training-runs/{run.pk}/"' in page and "Fine-tune now" in page
    assert "Models</a>" in team.client(team.admin).get(f"/projects/{team.project.pk}/").content.decode()


def test_the_api_starts_follows_and_cancels_runs_and_lists_versions(team, versions):
    api = team.api(team.admin)
    url = f"/api/projects/{team.project.pk}/training-runs/"
    assert api.post(url).status_code == 400  # nothing approved yet
    approved_demo_images(team, per_label=1)
    response = api.post(url)
    assert response.status_code == 201 and response.json()["status"] == "queued"
    run_id = response.json()["id"]
    assert "already" in api.post(url).json()["detail"]
    assert api.get(f"/api/training-runs/{run_id}/").json()["base_version"] == "finetune-2"
    assert api.get(url).json()["results"][0]["id"] == run_id
    assert api.post(f"/api/training-runs/{run_id}/cancel/").json()["status"] == "cancelled"
    assert api.post(f"/api/training-runs/{run_id}/cancel/").status_code == 400
    listed = api.get(f"/api/projects/{team.project.pk}/model-versions/").json()["results"]
    assert [(v["name"], v["in_use"]) for v in listed] == [("finetune-3", False), ("finetune-2", True),
                                                          ("finetune-1", False)]


def test_only_admins_fine_tune_and_outsiders_do_not_learn_the_project_exists(team, versions):
    from django.test import Client
    from rest_framework.test import APIClient

    approved_demo_images(team, per_label=1)
    run = training.training_run_start(team.project, team.admin)
    p, v = team.project.pk, versions["finetune-1"].pk
    pages = [f"/projects/{p}/models/"]
    page_posts = [f"/projects/{p}/models/finetune/", f"/projects/{p}/models/runs/{run.pk}/cancel/",
                  f"/projects/{p}/models/{v}/rollback/", f"/projects/{p}/models/default/rollback/"]
    api_gets = [f"/api/projects/{p}/training-runs/", f"/api/training-runs/{run.pk}/",
                f"/api/projects/{p}/model-versions/"]
    api_posts = [f"/api/projects/{p}/training-runs/", f"/api/training-runs/{run.pk}/cancel/",
                 f"/api/model-versions/{v}/rollback/", f"/api/projects/{p}/model-versions/default/rollback/"]
    for url in pages + page_posts:
        response = Client().post(url) if url in page_posts else Client().get(url)
        assert response.status_code == 302 and response.url.startswith("/accounts/login/"), url
    for url in api_gets + api_posts:
        assert (APIClient().post(url) if url in api_posts else APIClient().get(url)).status_code == 401, url
    for user, expected in ((team.outsider, 404), (team.viewer, 403), (team.radiologist, 403)):
        client, api = team.client(user), team.api(user)
        for url in pages:
            assert client.get(url).status_code == expected, (user, url)
        for url in page_posts:
            assert client.post(url).status_code == expected, (user, url)
        for url in api_gets:
            assert api.get(url).status_code == expected, (user, url)
        for url in api_posts:
            assert api.post(url).status_code == expected, (user, url)
    run.refresh_from_db()
    team.project.refresh_from_db()
    assert run.status == "queued" and not run.cancel_requested and team.project.model_version == versions["finetune-2"]
    assert TrainingRun.objects.count() == 1
