# blogstream application image: Faust workers, provider simulators and alembic migrations.
#   docker build -t blogstream:local .
#   docker compose -f docker-compose.kafka.yml up --build --scale worker=3
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Source (keep .venv/ and .stack/ out of the build context with a .dockerignore).
COPY . /app
RUN pip install . \
 && useradd --create-home --uid 10001 blogstream \
 && chown -R blogstream /app

USER blogstream
# alembic.ini + migrations/ live in /app, so `alembic upgrade head` works from WORKDIR.
CMD ["faust", "-A", "streams", "worker", "-l", "info"]
