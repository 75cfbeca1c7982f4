"""LOG_FORMAT=json: one JSON object a line, carrying the job, image and training run ids given with `extra=`."""
import io
import json
import logging
import os
import subprocess
import sys

from annotator.annotation import services
from annotator.models import Job
from config.log_format import JsonFormatter
from tests.conftest import ROOT


def formatted(log_call) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json")
    logger.addHandler(handler)
    try:
        log_call(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_ids_given_and_no_others():
    [with_ids, without] = formatted(lambda log: (
        log.warning("image %s of job %s", 12, 7, extra={"job_id": 7, "image_id": 12, "training_run_id": 3}),
        log.warning("nothing to add"),
    ))
    assert with_ids["message"] == "image 12 of job 7" and with_ids["level"] == "WARNING"
    assert (with_ids["job_id"], with_ids["image_id"], with_ids["training_run_id"]) == (7, 12, 3)
    assert with_ids["logger"] == "tests.json" and with_ids["time"].endswith("+00:00")
    assert not {"job_id", "image_id", "training_run_id"} & set(without)


def test_json_lines_hold_the_traceback_of_an_exception():
    def fail(log):
        try:
            raise ValueError("bad pixels")
        except ValueError:
            log.exception("job failed", extra={"job_id": 4})

    [line] = formatted(fail)
    assert line["job_id"] == 4 and "ValueError: bad pixels" in line["exception"]


def test_log_format_json_switches_the_whole_process_to_json_lines(tmp_path):
    code = ("import django, logging; django.setup(); "
            "logging.getLogger('annotator.annotation.services').info('job %s done', 5, extra={'job_id': 5})")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_FORMAT": "json", "VAR_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True)
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["message"], line["job_id"], line["logger"]) == ("job 5 done", 5, "annotator.annotation.services")


def test_the_job_log_line_carries_the_job_id(team, caplog):
    job = Job.objects.create(project=team.project, source_name="empty.zip")  # no images: nothing to run the models on
    with caplog.at_level(logging.INFO, logger="annotator.annotation.services"):
        services.job_annotate(job.pk)
    assert [record.job_id for record in caplog.records if record.name == "annotator.annotation.services"] == [job.pk]
