# blogstream application image: Faust workers, provider simulators and alembic migrations.
#   docker build -t blogstream:local .
#   docker compose -f docker-compose.kafka.yml up --build --scale worker=3
#
# Dependencies come from requirements.lock (every version pinned, `make lock`), the project from
# its own wheel installed without resolving anything, so the image runs exactly what was tested.

# --- the project's wheel ------------------------------------------------------------------------
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams/ streams/
COPY store/ store/
COPY connectors/ connectors/
COPY simulators/ simulators/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- the image ----------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 blogstream

# The lock first: this layer is rebuilt only when a pinned version changes.
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock

COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl \
 && pip check \
 && rm -rf /tmp/wheels /tmp/requirements.lock

# alembic.ini + migrations/ in the working directory, so `alembic upgrade head` works here;
# the worker keeps its local files (BLOGSTREAM_DATA_DIR, default .faust) in it too.
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ migrations/
RUN chown blogstream:blogstream /app

USER blogstream
EXPOSE 6066

# The worker's /health (it answers once the worker runs and reads Postgres). Compose gives the
# simulators and the one-shot migrations their own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=6 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BLOGSTREAM_WEB_PORT', '6066'), timeout=4)"]

CMD ["faust", "-A", "streams", "worker", "-l", "info"]
