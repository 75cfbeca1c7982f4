"""LOG_FORMAT=json: one JSON object per line for log collectors, with the ids a call gives through `extra=`."""
import json
import logging
from datetime import datetime, timezone

# Passed as e.g. log.info("...", extra={"job_id": job.pk}); they become fields to filter on.
CONTEXT_FIELDS = ("job_id", "image_id", "training_run_id")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
