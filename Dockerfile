# One image for the web server and the workers. torch from requirements.txt is the PyPI build with its CUDA
# libraries: it uses an NVIDIA GPU when the container is given one and the CPU otherwise.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/data STATIC_ROOT=/app/staticfiles \
    WEB_CONCURRENCY=3 GUNICORN_CMD_ARGS="--bind 0.0.0.0:8000 --timeout 300 --access-logfile -"
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# Static files go into the image, where whitenoise serves them. The throwaway key and folder keep settings from
# writing a secret key or broker folders into an image layer.
RUN SECRET_KEY=collectstatic-only VAR_DIR=/tmp/collectstatic python manage.py collectstatic --noinput \
    && rm -rf /tmp/collectstatic
# Not root. A named volume mounted on /data starts with this folder's owner.
RUN useradd --create-home --uid 1000 annotator && mkdir /data && chown annotator /data
USER annotator
VOLUME /data
EXPOSE 8000
# gunicorn reads WEB_CONCURRENCY (its processes) and GUNICORN_CMD_ARGS from the environment; the long timeout
# lets an upload of up to UPLOAD_MAX_BYTES finish.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn config.wsgi"]
