# Two commands on a fresh machine: `make demo` runs the tool on its embedded default, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Tests run on real PostgreSQL and Redis; override these to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: demo test install serve

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo_setup
	$(MAKE) --no-print-directory serve

# The web server (gunicorn, config/gunicorn.py) on :8000 with one Celery worker beside it (running beat too, for the
# job sweep); Ctrl+C stops both.
serve: install
	@$(PY) -m celery -A config worker --beat --pool=solo --loglevel=INFO --without-mingle --without-gossip & \
	  trap "kill $$! 2>/dev/null" EXIT INT TERM; \
	  echo "Open http://$${WEB_BIND:-127.0.0.1:8000} (the worker is annotating the demo images in the background)"; \
	  $(PY) -m gunicorn --config config/gunicorn.py config.wsgi

test: install
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) $(PY) -m pytest
