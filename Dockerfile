# One image for the web server and the workers. torch from requirements.txt is the PyPI build with its CUDA
# libraries: it uses an NVIDIA GPU when the container is given one and the CPU otherwise.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/data STATIC_ROOT=/app/staticfiles \
    WEB_BIND=0.0.0.0:8000
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
# config/gunicorn.py sizes gunicorn to the container's cores (WEB_CONCURRENCY, WEB_THREADS override it).
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn --config config/gunicorn.py config.wsgi"]
