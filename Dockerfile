# The production image: the web app, the Celery workers and beat all run from it (see
# docker-compose.yml). Two stages: the builder turns the sources into a wheel; the runtime
# stage installs the locked dependencies (hash-checked) and then that wheel alone, so the image
# holds no source tree, no build tools and nothing unlocked.

FROM python:3.11-slim AS builder
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# What the wheel is built from (tests/test_compose.py checks this list against the wheel test).
COPY pyproject.toml README.md ./
COPY newsletter ./newsletter
COPY subscribers ./subscribers
COPY tasks ./tasks
COPY templates ./templates
COPY examples ./examples
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NEWSLETTER_VAR_DIR=/data
# A system account with a fixed id, so a host directory mounted on /data can be given to it.
RUN groupadd --system --gid 10001 newsletter \
    && useradd --system --uid 10001 --gid newsletter --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin newsletter \
    && mkdir /data && chown newsletter:newsletter /data
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=builder /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && rm -r /tmp/wheels && pip check
USER newsletter
WORKDIR /data
VOLUME /data
EXPOSE 8000
# Liveness of the web server (/healthz touches neither the database nor the broker). Services
# that serve no HTTP (worker, beat, migrate) override or disable it in docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
CMD ["newsletter", "serve", "--host", "0.0.0.0", "--port", "8000"]
