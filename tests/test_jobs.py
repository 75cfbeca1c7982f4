"""The annotation job: idempotent, resumable, held by one worker at a time, handed back when the worker stops, and
clear when the ensemble does not fit the project."""
from datetime import timedelta

import pytest
from celery.signals import worker_shutting_down
from django.utils import timezone

from annotator import shutdown
from annotator.annotation import services
from annotator.masks.services import mask_create
from annotator.models import Image, Job, Mask, Prediction
from annotator.tasks import job_annotate_task
from tests.conftest import png_bytes, zip_of


@pytest.fixture(scope="module")
def tiny_ensemble_folder(tmp_path_factory):
    """A small random ensemble with the project's classes: fast, and enough to exercise the job's bookkeeping."""
    from ml import EnsembleManifest, save_ensemble
    from ml.ensemble import ensemble_build

    folder = tmp_path_factory.mktemp("ensemble")
    manifest = EnsembleManifest(architectures=["resnet18", "efficientnet_b0", "densenet121"],
                                classes=["normal", "lesion"], healthy_class="normal", input_size=32)
    return save_ensemble(ensemble_build(manifest), folder)


@pytest.fixture
def tiny_ensemble(tiny_ensemble_folder, settings):
    settings.ENSEMBLE_DIR = tiny_ensemble_folder
    settings.ML_MC_SAMPLES = 3
    services.ensemble_load.cache_clear()
    yield tiny_ensemble_folder
    services.ensemble_load.cache_clear()


def uploaded_job(team, count=3, first=0):
    from annotator.ingest.archive import zip_entries
    from annotator.ingest.services import upload_ingest

    contents = zip_entries(zip_of({f"{i}.png": png_bytes(value=i * 40) for i in range(first, first + count)}))
    return upload_ingest(team.project, contents, "upload.zip", team.admin)


def test_annotating_a_job_twice_writes_each_image_once(team, tiny_ensemble):
    job = uploaded_job(team)
    services.job_annotate(job.pk)
    job.refresh_from_db()
    assert (job.status, job.annotated, job.total) == ("done", 3, 3)
    # As if the message were delivered again after its worker died.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, heartbeat_at=None)
    services.job_annotate(job.pk)
    assert Prediction.objects.count() == 9 and Mask.objects.count() == 3
    assert all(i.annotated_at and i.model_version.startswith(tiny_ensemble.name) for i in job.images.all())


def test_a_job_whose_worker_beats_is_left_to_it_and_one_whose_worker_went_silent_is_taken_over(
        team, tiny_ensemble, settings):
    now = timezone.now()
    beating, silent, retried = (uploaded_job(team, count=1, first=i) for i in range(3))
    Job.objects.filter(pk__in=[beating.pk, retried.pk]).update(status=Job.Status.RUNNING, heartbeat_at=now)
    Job.objects.filter(pk=silent.pk).update(
        status=Job.Status.RUNNING, heartbeat_at=now - timedelta(seconds=settings.JOB_LEASE_SECONDS + 1))
    for job in (beating, silent):
        services.job_annotate(job.pk)
    services.job_annotate(retried.pk, takeover=True)  # the task's retry: its own failed attempt held the lease
    assert Job.objects.get(pk=beating.pk).heartbeat_at == now and not beating.images.get().annotated_at
    for job in (silent, retried):
        job.refresh_from_db()
        assert (job.status, job.annotated) == ("done", 1) and job.heartbeat_at > now


def test_a_worker_whose_job_was_taken_over_stops_at_the_next_batch(team, tiny_ensemble, settings, monkeypatch):
    settings.ML_BATCH_SIZE = 1
    job = uploaded_job(team, count=3)
    store = services.image_annotation_store

    def store_while_another_worker_takes_over(*args):
        Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())
        return store(*args)

    monkeypatch.setattr(services, "image_annotation_store", store_while_another_worker_takes_over)
    services.job_annotate(job.pk)
    job.refresh_from_db()
    assert job.status == "running" and job.images.filter(annotated_at__isnull=False).count() == 1


def test_a_worker_told_to_stop_hands_its_job_back_between_batches(
        team, tiny_ensemble, settings, monkeypatch, django_capture_on_commit_callbacks):
    settings.ML_BATCH_SIZE = 1
    job = uploaded_job(team, count=3)
    store = services.image_annotation_store

    def store_as_the_worker_is_told_to_stop(*args):
        worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm", exitcode=0)
        return store(*args)

    monkeypatch.setattr(shutdown._stopping, "value", 0)  # back to 0 after the test
    monkeypatch.setattr(services, "image_annotation_store", store_as_the_worker_is_told_to_stop)
    with django_capture_on_commit_callbacks() as callbacks:
        services.job_annotate(job.pk)
    job.refresh_from_db()
    assert (job.status, job.annotated, job.heartbeat_at) == ("queued", 1, None)
    assert len(callbacks) == 1  # sent again, for the next worker
    assert job.images.filter(annotated_at__isnull=False).count() == 1 and Prediction.objects.count() == 3

    monkeypatch.setattr(shutdown._stopping, "value", 0)  # the next worker
    monkeypatch.setattr(services, "image_annotation_store", store)
    services.job_annotate(job.pk)
    job.refresh_from_db()
    assert (job.status, job.annotated) == ("done", 3) and Prediction.objects.count() == 9


def test_a_worker_told_to_stop_sends_re_annotation_back_to_the_queue(
        team, tiny_ensemble, monkeypatch, django_capture_on_commit_callbacks):
    job = uploaded_job(team, count=2)
    services.job_annotate(job.pk)
    Image.objects.update(model_version="an-older-version")
    monkeypatch.setattr(shutdown._stopping, "value", 1)
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.project_reannotate(team.project.pk) == 0
    assert len(callbacks) == 1 and Prediction.objects.count() == 6
    assert set(Image.objects.values_list("model_version", flat=True)) == {"an-older-version"}


def test_a_finished_job_delivered_again_does_nothing(team, tiny_ensemble):
    job = uploaded_job(team, count=1)
    services.job_annotate(job.pk)
    finished_at = Job.objects.get(pk=job.pk).finished_at
    services.job_annotate(job.pk)
    assert Job.objects.get(pk=job.pk).finished_at == finished_at and Mask.objects.count() == 1


def test_an_ensemble_with_other_classes_fails_the_job_with_a_clear_reason(team, tiny_ensemble):
    team.project.classes = ["healthy", "tb"]
    team.project.healthy_class = "healthy"
    team.project.save()
    job = uploaded_job(team, count=1)
    job_annotate_task.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == "failed" and "['normal', 'lesion']" in job.failure and "['healthy', 'tb']" in job.failure
    assert Prediction.objects.count() == 0


def test_unfinished_jobs_are_sent_again(team, django_capture_on_commit_callbacks):
    queued = uploaded_job(team, count=1)
    Job.objects.create(project=team.project, source_name="old.zip", status=Job.Status.DONE)
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.jobs_requeue_unfinished() == 1
    assert len(callbacks) == 1 and Job.objects.get(pk=queued.pk).status == "queued"


def test_a_radiologist_who_drew_before_the_ensemble_ran_keeps_the_latest_version(team, tiny_ensemble):
    import numpy as np

    job = uploaded_job(team, count=2)
    drawn_on, untouched = job.images.order_by("id")
    mask = np.zeros((drawn_on.height, drawn_on.width), dtype=bool)
    mask[:5, :5] = True
    mask_create(drawn_on, mask, Mask.Source.HUMAN, author=team.radiologist)
    services.job_annotate(job.pk)
    assert [(m.version, m.source) for m in drawn_on.masks.all()] == [(1, "human")]
    assert drawn_on.predictions.count() == 3  # the ensemble's opinion is still there, beside the drawing
    assert [(m.version, m.source) for m in untouched.masks.all()] == [(1, "model")]


@pytest.fixture(scope="module")
def ensemble_with_member_folder(tmp_path_factory):
    """The tiny panel with an (untrained) segmentation member whose mask is the proposal."""
    from ml import AnnotateConfig, EnsembleManifest, save_ensemble
    from ml.config import SegmenterConfig
    from ml.ensemble import ensemble_build
    from ml.segment import segmenter_build

    manifest = EnsembleManifest(architectures=["resnet18"], classes=["normal", "lesion"], healthy_class="normal",
                                input_size=32, annotate=AnnotateConfig(proposal="segmentation"),
                                segmenter=SegmenterConfig(input_size=32, threshold=0.01))  # low: it proposes a mask
    ensemble = ensemble_build(manifest)
    ensemble.segmenter = segmenter_build(manifest.segmenter)
    return save_ensemble(ensemble, tmp_path_factory.mktemp("with_member"))


def test_an_ensemble_with_a_segmentation_member_stores_both_masks_and_the_page_shows_them(
        team, settings, ensemble_with_member_folder):
    import numpy as np

    from annotator.models import CandidateMask
    from annotator.png import mask_file_read

    settings.ENSEMBLE_DIR = ensemble_with_member_folder
    settings.ML_MC_SAMPLES = 2
    services.ensemble_load.cache_clear()
    try:
        job = uploaded_job(team, count=2)
        services.job_annotate(job.pk)
    finally:
        services.ensemble_load.cache_clear()
    for image in Image.objects.filter(job=job):
        candidates = {c.source: c for c in image.candidate_masks.all()}
        assert set(candidates) == {"consensus", "segmentation"}
        assert candidates["segmentation"].proposed and not candidates["consensus"].proposed
        assert np.array_equal(mask_file_read(image.masks.get().file.name),
                              mask_file_read(candidates["segmentation"].file.name))
        page = team.client(team.radiologist).get(f"/review/images/{image.pk}/").content.decode()
        assert 'data-toggle="candidate-segmentation"' in page and "Segmentation member" in page
        assert 'data-toggle="candidate-consensus"' in page and "Consensus of the panel" in page
    assert CandidateMask.objects.count() == 4
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, heartbeat_at=None)
    services.job_annotate(job.pk)
    assert CandidateMask.objects.count() == 4  # annotated once


def test_an_ensemble_without_a_member_stores_no_candidate_masks(team, tiny_ensemble):
    from annotator.models import CandidateMask

    services.job_annotate(uploaded_job(team, count=1).pk)
    assert CandidateMask.objects.count() == 0
