"""All settings, read from environment variables with defaults that run the embedded demo.

With nothing set: SQLite in var/, a filesystem broker in var/ (no server to install), the committed demo ensemble.
Set DATABASE_URL and CELERY_BROKER_URL (or REDIS_URL) to run on PostgreSQL and Redis.
"""
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name, default=False):
    return os.environ.get(name, str(default)).lower() in ("1", "true", "yes", "on")


def env_int(name, default):
    return int(os.environ.get(name, default))


VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    # A key of this install's own, so nothing ever runs on a key published in the repository.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = key_file.read_text().strip()
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
# Served over HTTPS: session and CSRF cookies are then never sent over plain HTTP.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    # Only behind a proxy that sets X-Forwarded-Proto itself; otherwise any client could claim HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Served over HTTPS only: plain HTTP is redirected, and browsers are told to use nothing but HTTPS for this many
# seconds (HSTS). Both off by default, as the demo runs on plain HTTP; /healthz and /readyz are never redirected.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
# Sent on every response (annotator.middleware.SecurityHeadersMiddleware); an empty value sends none. Scripts only
# from files of this site (the pages' ES modules, Swagger UI's from drf-spectacular-sidecar), never inline or eval;
# inline styles for the templates' style attributes and <style> blocks; data: and blob: images for Swagger UI's icons
# and the images it shows from API responses.
CONTENT_SECURITY_POLICY = os.environ.get(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
PERMISSIONS_POLICY = os.environ.get("PERMISSIONS_POLICY", "camera=(), microphone=(), geolocation=()")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served from here: no CDN
    "axes",  # login throttling
    "annotator",
    "review",
]

MIDDLEWARE = [
    "annotator.middleware.HealthCheckMiddleware",  # first: /healthz and /readyz skip host checks and login
    "django.middleware.security.SecurityMiddleware",
    "annotator.middleware.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "annotator.middleware.LoginRequiredMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: turns a refused login into its lockout page
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server's processes and the worker write at once; wait for the lock instead of failing. In WAL mode
    # readers never wait for a writer. Connections last a minute, as on PostgreSQL: one per gunicorn thread.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE",
                                       "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords in a row for one user name from one
# address, that pair is refused for LOGIN_COOLOFF_MINUTES (0: until an admin deletes the lock in /admin/); every
# refused try starts the cool-off again. API tokens are no password and are never locked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15)) or None  # axes: None is no end
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # "in a row": a successful login starts the count again
AXES_LOCKOUT_TEMPLATE = "registration/login.html"  # the login form again, saying why and for how long
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))  # the Docker image collects into its own
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an anonymous request gets 401 with a WWW-Authenticate header rather than 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "PAGE_SIZE": 50,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Weak-to-pixel API",
    "DESCRIPTION": "Projects, images, the ensemble's predictions, mask versions, reviews, exports and fine-tuning. "
                   "Authenticate with `Authorization: Token <key>` (tokens in the admin) or a browser session.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],  # like the API it describes
    "COMPONENT_SPLIT_REQUEST": True,  # multipart uploads get their own request schemas
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No validator badge: it would load an image from swagger.io, which the CSP blocks, with the schema's address.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# Celery: Redis when configured, otherwise a folder-based broker that needs no server.
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
    }
    for folder in ("queue", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
else:
    # Redis puts a message that a worker took and never acknowledged (the worker was killed) back in the queue after
    # this many seconds. A killed worker's job does not wait for it: the sweep goes by the job's lease (below). Keep it
    # above the longest job: one still running then is taken over by the worker its message goes to, and the first
    # stops at its next batch (that batch computed twice, stored once).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_TASK_IGNORE_RESULT = True  # progress lives in the database
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Task events (sent, started, succeeded, failed) for Flower or `celery -A config events`.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # the worker logs through LOGGING below, plain or JSON like the web
# Celery beat (`celery -A config worker -B`, or a `celery -A config beat` of its own) sends queued jobs again when no
# broker message holds them any more (e.g. after Redis restarted without persistence), and running jobs whose worker
# stopped beating. A killed worker's job is sent again within JOB_LEASE_SECONDS + JOB_SWEEP_SECONDS (90 s).
JOB_SWEEP_SECONDS = env_int("JOB_SWEEP_SECONDS", 30)
JOB_SWEEP_GRACE_SECONDS = env_int("JOB_SWEEP_GRACE_SECONDS", 60)  # a younger job's message may still be on its way
# A running job's worker beats after every batch; one silent this long is taken for dead and its job for another
# worker to take over. Keep it above the longest batch (ML_BATCH_SIZE images, and loading the ensemble first).
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 60)
CELERY_BEAT_SCHEDULE = {
    "jobs-sweep": {"task": "annotator.tasks.jobs_sweep_task", "schedule": JOB_SWEEP_SECONDS,
                   "options": {"expires": JOB_SWEEP_SECONDS}},  # sweeps that waited a whole period are moot
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SYNC_EVERY = 1  # rewrite that file after every task sent: its age tells that beat is alive

# Review
REVIEW_CLAIM_MINUTES = env_int("REVIEW_CLAIM_MINUTES", 15)  # how long "next" keeps an image for one reviewer

# The ensemble
ENSEMBLE_DIR = Path(os.environ.get("ENSEMBLE_DIR", BASE_DIR / "demo" / "ensemble"))
ML_DEVICE = os.environ.get("ML_DEVICE") or None  # None: CUDA when present, else CPU
ML_MC_SAMPLES = env_int("ML_MC_SAMPLES", 0) or None  # None: the checkpoint's own T
ML_BATCH_SIZE = env_int("ML_BATCH_SIZE", 8)
# Each web process loads torch and the click refiners as it starts, not on the first click (which then took 4 s): it
# costs about 870 MB of memory per process (torch with its CUDA libraries, PSS) from the start instead of from then.
REFINER_WARM = env_bool("REFINER_WARM", True)

# Fine-tuning from approved reviews: each trained ensemble is a folder under MODELS_DIR and a ModelVersion row.
MODELS_DIR = Path(os.environ.get("MODELS_DIR", VAR_DIR / "models"))
FINETUNE_EVERY_APPROVALS = env_int("FINETUNE_EVERY_APPROVALS", 0)  # start by itself after N new approvals; 0: never
FINETUNE_EPOCHS = env_int("FINETUNE_EPOCHS", 5)
FINETUNE_VALIDATION_PERCENT = env_int("FINETUNE_VALIDATION_PERCENT", 20)  # approved images held out, by content hash
FINETUNE_CAM_WEIGHT = float(os.environ.get("FINETUNE_CAM_WEIGHT", 0.3))  # λ of the mask term (1 - soft IoU of CAM)
FINETUNE_SEGMENTER_EPOCHS = env_int("FINETUNE_SEGMENTER_EPOCHS", 10)  # the segmentation member's; 0: keep the parent's
FINETUNE_REFINER_EPOCHS = env_int("FINETUNE_REFINER_EPOCHS", 10)  # the click refiner's; 0: keep the parent's
FINETUNE_LEARNING_RATE = float(os.environ.get("FINETUNE_LEARNING_RATE", 1e-4))

# Upload limits: a bad file is rejected by name, the rest of the upload still imports.
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 2 * 1024**3)  # one zip
UPLOAD_MAX_FILES = env_int("UPLOAD_MAX_FILES", 20000)  # members of one zip
IMAGE_MAX_BYTES = env_int("IMAGE_MAX_BYTES", 64 * 1024**2)  # one image, uncompressed size in the zip
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 50_000_000)  # width x height, against decompression bombs
UPLOAD_MAX_COMPRESSION_RATIO = env_int("UPLOAD_MAX_COMPRESSION_RATIO", 200)  # a zip member beyond this is a bomb
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024**2
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024**2  # larger uploads stream to a temporary file

LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain")  # plain for people, json (one object a line) for collectors
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.log_format.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
WHITENOISE_USE_FINDERS = True  # static files straight from static/, no collectstatic step for the demo
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
