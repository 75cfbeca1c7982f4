"""Faults the tool survives, on real PostgreSQL, and with real Celery worker processes on a real Redis: a worker
killed mid-job, a worker asked to stop mid-job, Redis restarted with jobs queued, the database unreachable for a
while; and two reviewers saving the same mask at once.

Each worker test runs its own throwaway redis-server, so a restart or a dead worker's leftovers touch nothing else.
To stop a worker at a known point, the test holds back one image's mask: it inserts, and keeps uncommitted, a row
with the version the worker is about to write for that image. Django's foreign keys are deferred, so that row does
not lock the image itself: the worker takes the image, writes its predictions and heatmaps, then waits on the unique
(image, version) index in the middle of its transaction, with the images before it stored.
"""
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.db import connection, transaction
from kombu import Connection
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from annotator.models import Image, Job, Mask, Prediction
from annotator.masks.services import mask_array
from annotator.tallies import image_tally_add
from annotator.tasks import job_annotate_task
from tests.conftest import at_once, png_bytes
from tests.factories import annotated_image, box_mask, mask_png
from tests.test_claims import second_radiologist
from tests.test_jobs import tiny_ensemble_folder  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURES = 3  # members of the tiny ensemble
WAIT_S = 90  # a ceiling for a loaded machine: each worker process imports torch


def wait_until(condition, what, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout}s for {what}"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own that keeps nothing on disk, so a restart loses every message."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        wait_until(self._answers, "redis-server to start", timeout=10)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)

    def restart(self):
        self.stop()
        self.start()

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    def _answers(self) -> bool:
        try:
            return self.client().ping()
        except RedisConnectionError:
            return False


@pytest.fixture
def redis_server(tmp_path):
    assert shutil.which("redis-server"), "the fault tests start a redis-server of their own: install redis-server"
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class PostgresProxy:
    """Forwards a local port to the database server; cut() drops every connection through it and turns new ones
    away until restore(), as a database that went away would. The shared server itself is never touched."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.open_sockets = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        with self.lock:
            self.up = False
            for sock in self.open_sockets:
                self._close(sock)
            self.open_sockets.clear()

    def restore(self):
        with self.lock:
            self.up = True

    def close(self):
        self.cut()
        self.listener.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                if not self.up:
                    self._close(client)
                    continue
                server = socket.create_connection(self.upstream)
                self.open_sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        self._close(source)
        self._close(target)

    @staticmethod
    def _close(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def database_url(port=None) -> str:
    """The pytest database, for processes outside the test; through `port` when given."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{port or db['PORT'] or 5432}/{db['NAME']}"


class Workers:
    """Celery worker processes as `celery -A config worker` runs them, on the test's database, media, broker and
    tiny ensemble, one image per batch; each one's output goes to its own log."""

    def __init__(self, folder: Path, env: dict):
        self.folder = folder
        self.env = env
        self.processes = []

    def start(self, pool="solo", extra_args=(), **env) -> subprocess.Popen:
        log = self.folder / f"worker-{len(self.processes)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", f"--pool={pool}", "--concurrency=1",
                 "--loglevel=INFO", "--without-mingle", "--without-gossip",
                 f"--hostname=faults{len(self.processes)}@%h", *extra_args],
                cwd=ROOT, env={**self.env, **env}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        process.log = log
        self.processes.append(process)
        return process

    def sweep(self, **env) -> str:
        """Run the job sweep once, as beat has a worker do it; what it printed: the ids it sent again."""
        code = "import django; django.setup(); from annotator.sweep import jobs_sweep; print(jobs_sweep())"
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**self.env, **env}, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def workers(transactional_db, tiny_ensemble_folder, redis_server, media_root, tmp_path):  # noqa: F811
    assert connection.vendor == "postgresql", "fault tests run on PostgreSQL: use `make test`"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": database_url(),
           "CELERY_BROKER_URL": redis_server.url, "MEDIA_ROOT": str(media_root),
           "ENSEMBLE_DIR": str(tiny_ensemble_folder), "ML_MC_SAMPLES": "3", "ML_BATCH_SIZE": "1"}
    started = Workers(tmp_path, env)
    yield started
    started.stop_all()
    # A killed worker's database session ends by itself; the test database is emptied only once it has.
    wait_until(lambda: other_sessions() == 0, "the workers' database sessions to end")


def other_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return cursor.fetchone()[0]


def waiting_on_the_held_mask() -> bool:
    """A worker is in the middle of an image's transaction, its predictions written, its mask waiting."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return any(query.startswith('INSERT INTO "annotator_mask"') for (query,) in cursor.fetchall())


def queued_job(project, count, broker_url) -> Job:
    """A job of `count` small distinct images, its message sent to the broker as an upload sends it."""
    job = Job.objects.create(project=project, source_name="faults.zip", imported=count)
    for i in range(count):
        data = png_bytes(value=30 + 40 * i)
        digest = hashlib.sha256(data + f"{job.pk}-{i}".encode()).hexdigest()
        image = Image(project=project, job=job, sha256=digest, original_name=f"{job.pk}-{i}.png", width=64,
                      height=48)
        image.file.save(f"{digest}.png", ContentFile(data), save=False)
        image.save()
        image_tally_add(image)
    with Connection(broker_url) as broker:
        job_annotate_task.apply_async(args=[job.pk], connection=broker)
    return job


def waiting_job_ids(broker) -> list[int]:
    """The job of each annotation message waiting in a Redis queue."""
    messages = [json.loads(raw) for raw in broker.lrange("celery", 0, -1)]
    return [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages
            if message["headers"]["task"] == job_annotate_task.name]


@contextmanager
def mask_held_back(image):
    """Keep the worker from finishing this image until the block ends (see the module's docstring)."""
    inserted, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                Mask.objects.create(image_id=image.pk, version=1, source=Mask.Source.MODEL, pixels=0,
                                    file="held-back.png")
                inserted.set()
                release.wait()
                transaction.set_rollback(True)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert inserted.wait(timeout=30), "could not hold the mask back"
    try:
        yield
    finally:
        release.set()
        holder.join()


def assert_all_or_nothing(job):
    """Every image of the job has all its predictions and exactly one model mask, marked annotated, or none."""
    for image in job.images.all():
        predictions = list(image.predictions.values_list("architecture", flat=True))
        masks = list(image.masks.values_list("version", "source"))
        if image.annotated_at:
            assert len(predictions) == len(set(predictions)) == ARCHITECTURES and masks == [(1, "model")], image
        else:
            assert predictions == [] and masks == [], image


def assert_annotated_once(job):
    job.refresh_from_db()
    assert (job.status, job.annotated, job.total) == ("done", job.images.count(), job.images.count()), job.failure
    assert job.images.filter(annotated_at__isnull=True).count() == 0
    assert_all_or_nothing(job)
    assert Prediction.objects.filter(image__job=job).count() == ARCHITECTURES * job.images.count()
    assert Mask.objects.filter(image__job=job).count() == job.images.count()


def test_a_worker_killed_mid_job_leaves_nothing_half_written_and_a_new_worker_finishes_the_job_within_2_minutes(
        team, workers, redis_server, tmp_path):
    job = queued_job(team.project, 3, redis_server.url)
    third = job.images.order_by("id")[2]
    # Every setting at its default, the visibility timeout's hour included: only the job's lease brings it back.
    with mask_held_back(third):
        doomed = workers.start()
        wait_until(waiting_on_the_held_mask, "the worker to reach the third image")
        doomed.send_signal(signal.SIGKILL)  # in the middle of the third image's transaction
        doomed.wait()
    wait_until(lambda: other_sessions() == 0, "the killed worker's database session to end")
    assert [bool(i.annotated_at) for i in job.images.order_by("id")] == [True, True, False]
    assert_all_or_nothing(job)
    broker = redis_server.client()
    assert (broker.llen("celery"), broker.hlen("unacked")) == (0, 1)  # taken, never acknowledged
    assert workers.sweep(JOB_SWEEP_GRACE_SECONDS="0") == "[]"  # its lease is still fresh: the sweep leaves it alone

    # A new worker running beat, as `make serve` runs one: its sweep sends the job again once the lease expired,
    # though Redis still holds the dead worker's message, and the new worker takes the job over.
    started = time.monotonic()
    successor = workers.start(extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"])
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "done", "the job to finish", timeout=120)
    print(f"\nkilled worker's job finished {time.monotonic() - started:.0f} s after a new worker started")
    assert_annotated_once(job)
    log = successor.log.read_text()
    assert f"the workers of running jobs [{job.pk}] stopped beating; sent them again" in log
    assert f"job {job.pk}: taken over: its worker stopped beating" in log
    assert sum("job_annotate_task[" in line and line.endswith(" received") for line in log.splitlines()) == 1
    # The dead worker's message stays unacknowledged until the visibility timeout; then it finds the job done.
    wait_until(lambda: broker.llen("celery") == 0 and broker.hlen("unacked") == 1, "the new message's ack")


@pytest.mark.parametrize("pool, extra_args", [("solo", ["--beat"]), ("prefork", [])])
def test_a_worker_asked_to_stop_mid_job_finishes_its_image_exits_at_once_and_a_new_worker_finishes_the_job(
        team, workers, redis_server, tmp_path, pool, extra_args):
    job = queued_job(team.project, 8, redis_server.url)
    images = list(job.images.order_by("id"))
    if extra_args:
        extra_args = [*extra_args, f"--schedule={tmp_path / 'beat-schedule'}"]
    # The last image held back all along: a worker that goes on with the job instead of stopping never gets past it.
    with mask_held_back(images[-1]):
        with mask_held_back(images[2]):
            worker = workers.start(pool=pool, extra_args=extra_args)
            wait_until(waiting_on_the_held_mask, "the worker to reach the third image")
            asked = time.monotonic()
            worker.send_signal(signal.SIGTERM)  # in the middle of the third image
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker was still running 15 s after SIGTERM")
        stopped = time.monotonic() - asked
    print(f"\n{pool} worker exited {stopped:.1f} s after SIGTERM")
    assert "Warm shutdown" in worker.log.read_text()
    job.refresh_from_db()
    # Its image finished, then handed back: the job queued again with its message waiting for the next worker.
    assert [bool(i.annotated_at) for i in job.images.order_by("id")] == [True] * 3 + [False] * 5
    assert_all_or_nothing(job)
    assert (job.status, job.annotated, job.heartbeat_at) == ("queued", 3, None)
    assert waiting_job_ids(redis_server.client()) == [job.pk]

    started = time.monotonic()
    workers.start()
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "done", "the job to finish")
    print(f"stopped worker's job finished {time.monotonic() - started:.0f} s after a new worker started")
    assert_annotated_once(job)


def test_a_killed_pool_process_hands_its_job_back_at_once(team, workers, redis_server):
    job = queued_job(team.project, 3, redis_server.url)
    third = job.images.order_by("id")[2]
    # The visibility timeout and the lease at their defaults: only the pool's reject_on_worker_lost can bring it back
    # at once, and its message, delivered again, takes the lease over.
    with mask_held_back(third):
        worker = workers.start(pool="prefork")
        wait_until(waiting_on_the_held_mask, "the pool process to reach the third image")
        pool_process = int(Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0])
        os.kill(pool_process, signal.SIGKILL)
        assert_all_or_nothing(job)
    wait_until(lambda: Job.objects.get(pk=job.pk).status == "done", "the job to finish")
    assert_annotated_once(job)
    log = worker.log.read_text()
    assert worker.poll() is None and "WorkerLostError" in log and "taken over: its own message came back" in log


def test_jobs_queued_when_redis_restarts_are_swept_back_and_run_once(team, workers, redis_server, tmp_path):
    lost = queued_job(team.project, 2, redis_server.url)
    broker = redis_server.client()
    assert broker.llen("celery") == 1
    redis_server.restart()
    assert redis_server.client().llen("celery") == 0  # the queue is gone; the database still says queued
    kept = queued_job(team.project, 2, redis_server.url)  # queued after the restart: its message is there

    worker = workers.start(extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
                           JOB_SWEEP_SECONDS="1", JOB_SWEEP_GRACE_SECONDS="0")
    wait_until(lambda: Job.objects.filter(status="done").count() == 2, "both jobs to finish")
    assert_annotated_once(lost)
    assert_annotated_once(kept)
    log = worker.log.read_text()
    assert f"no broker message holds jobs [{lost.pk}]; sent them again" in log
    assert log.count("sent them again") == 1  # never the job whose message was there, nor the lost one twice


def test_the_database_going_away_mid_job_is_retried_with_backoff(team, workers, redis_server):
    db = connection.settings_dict
    proxy = PostgresProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    try:
        job = queued_job(team.project, 3, redis_server.url)
        second = job.images.order_by("id")[1]
        with mask_held_back(second):
            worker = workers.start(DATABASE_URL=database_url(port=proxy.port))
            wait_until(waiting_on_the_held_mask, "the worker to reach the second image")
            proxy.cut()
        # Down until the first retry, 5 s later, has failed to connect too; the next one, 10 s after it, runs.
        wait_until(lambda: "Retry in 10s" in worker.log.read_text(), "the second retry")
        proxy.restore()
        wait_until(lambda: Job.objects.get(pk=job.pk).status == "done", "the job to finish")
    finally:
        proxy.close()
    assert_annotated_once(job)
    log = worker.log.read_text()
    assert "Retry in 5s: OperationalError" in log and "Retry in 10s: OperationalError" in log


def test_two_reviewers_saving_the_same_version_at_once_one_wins_and_the_other_is_told(team, transactional_db):
    assert connection.vendor == "postgresql", "the race is tested on PostgreSQL: use `make test`"
    reviewers = [team.radiologist, second_radiologist(team)]
    image = annotated_image(team.project)
    drawings = {reviewers[0].pk: box_mask((40, 30), (0, 0, 10, 10)),
                reviewers[1].pk: box_mask((40, 30), (20, 10, 40, 30))}
    for parent_version in range(1, 6):
        def save(user):
            return team.api(user).post(
                f"/api/images/{image.pk}/masks/",
                {"parent_version": parent_version, "file": ContentFile(mask_png(drawings[user.pk]), "m.png")},
                format="multipart")

        responses = {user.pk: response for user, response in at_once(save, reviewers).items()}
        statuses = {user_id: response.status_code for user_id, response in responses.items()}
        assert sorted(statuses.values()) == [201, 409], {k: r.content for k, r in responses.items()}
        winner = next(user_id for user_id, status in statuses.items() if status == 201)
        loser = next(user_id for user_id, status in statuses.items() if status == 409)
        new_version = parent_version + 1
        assert responses[loser].json()["latest_version"] == new_version
        assert f"version {new_version} is now the latest" in responses[loser].json()["detail"]
        assert list(image.masks.order_by("version").values_list("version", flat=True)) == [*range(1, new_version + 1)]
        saved = image.masks.get(version=new_version)
        assert (saved.author_id, saved.parent.version) == (winner, parent_version)
        assert np.array_equal(mask_array(saved), drawings[winner])


def test_the_sweep_looks_into_the_demo_s_folder_broker_too(tmp_path):
    code = ("import django; django.setup(); from annotator.sweep import broker_task_args; "
            "from annotator.tasks import job_annotate_task as task; task.delay(7); task.delay(8); "
            "waiting, delivered = broker_task_args(task.name); print(sorted(waiting), delivered)")
    env = {name: value for name, value in os.environ.items() if name not in ("CELERY_BROKER_URL", "REDIS_URL")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**env, "DJANGO_SETTINGS_MODULE": "config.settings", "VAR_DIR": str(tmp_path)})
    assert result.stdout.strip() == "[7, 8] set()", result.stderr


def test_the_sweep_sends_lost_fine_tuning_runs_again_too(team, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    from annotator.models import TrainingRun
    from annotator.sweep import training_runs_sweep
    from annotator.tasks import training_run_task
    from config.celery import app

    assert app.conf.broker_url.startswith("redis://"), "the sweep test reads a Redis broker: use `make test`"
    broker = Redis.from_url(app.conf.broker_url)
    broker.flushdb()
    old = timezone.now() - timedelta(hours=1)
    lost, held = (TrainingRun.objects.create(project=team.project, status=status) for status in ("queued", "running"))
    TrainingRun.objects.filter(pk__in=[lost.pk, held.pk]).update(created_at=old)
    TrainingRun.objects.create(project=team.project, status="done")
    TrainingRun.objects.filter(status="done").update(created_at=old)
    try:
        training_run_task.delay(held.pk)  # its message waits in the queue: not lost
        with django_capture_on_commit_callbacks() as callbacks:
            assert training_runs_sweep() == [lost.pk]
        assert len(callbacks) == 1
    finally:
        broker.flushdb()


def test_the_sweep_sends_a_running_job_again_once_its_worker_stops_beating_whatever_the_broker_says(
        team, settings, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    from annotator.sweep import jobs_sweep
    from config.celery import app

    assert app.conf.broker_url.startswith("redis://"), "the sweep test reads a Redis broker: use `make test`"
    broker = Redis.from_url(app.conf.broker_url)
    broker.flushdb()
    now = timezone.now()
    silent_beat = now - timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)
    jobs = {name: Job.objects.create(project=team.project, source_name=f"{name}.zip", status=status,
                                     heartbeat_at=beat)
            for name, status, beat in [("killed", "running", silent_beat), ("beating", "running", now),
                                       ("silent, sent again", "running", silent_beat), ("lost", "queued", None),
                                       ("taken", "queued", None)]}
    Job.objects.update(created_at=now - timedelta(hours=1))
    try:
        for name in ("killed", "taken"):  # delivered to a worker and never acknowledged, as a killed worker leaves it
            job_annotate_task.delay(jobs[name].pk)
            broker.hset("unacked", name, json.dumps([json.loads(broker.lpop("celery")), "", "celery"]))
        job_annotate_task.delay(jobs["silent, sent again"].pk)  # waits in the queue for the next worker
        with django_capture_on_commit_callbacks() as callbacks:
            assert jobs_sweep() == sorted([jobs["killed"].pk, jobs["lost"].pk])
        assert len(callbacks) == 2
    finally:
        broker.flushdb()
