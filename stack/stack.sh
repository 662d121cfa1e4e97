#!/usr/bin/env bash
# Local blogstream stack (Kafka KRaft + PostgreSQL + provider simulators), no Docker needed.
#   stack/stack.sh up      start everything (idempotent), wait until ready, run migrations
#   stack/stack.sh down    stop everything (idempotent)
#   stack/stack.sh status  show what runs (exit 1 if something is not up)
#   stack/stack.sh reset   down + delete Kafka data and the Postgres cluster (keeps Kafka jars)
#   stack/stack.sh env     print export lines for BLOGSTREAM_* variables
# Env overrides: KAFKA_PORT KAFKA_CONTROLLER_PORT PG_PORT SIM_PORT BLOGSTREAM_STACK_DIR PG_BIN JAVA
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
if [[ ! -x "$py" ]]; then
  echo "[stack] ERROR: $py not found: create the venv first (python3.11 -m venv .venv && .venv/bin/pip install -e .)" >&2
  exit 1
fi
exec "$py" "$here/stack.py" "$@"
