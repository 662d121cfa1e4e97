"""Static checks of docker-compose.kafka.yml (Docker is not needed to run them)."""
from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to parse docker-compose.kafka.yml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.kafka.yml"
WORKER_ENV = (
    "BLOGSTREAM_KAFKA_BROKER",
    "BLOGSTREAM_DATABASE_URL",
    "OPENAI_BASE_URL",
    "REPLICATE_BASE_URL",
    "WIX_BASE_URL",
)


@pytest.fixture(scope="module")
def services() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc["services"]


def env_of(service: dict) -> dict[str, str]:
    """Compose allows `environment` as a mapping or as a list of KEY=VALUE."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict) -> list[tuple[str, str]]:
    """(host, container) pairs; host is '' when only the container port is given."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):  # long syntax
            out.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        out.append(("" if len(parts) == 1 else parts[-2], parts[-1]))
    return out


def command_text(service: dict) -> str:
    cmd = service.get("command") or ""
    return " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)


def test_expected_services_exist(services):
    for name in ("kafka", "kafka-ui", "postgres", "migrate", "simulators", "worker"):
        assert name in services, f"service {name!r} missing"


def test_kafka_is_kraft_single_node_on_9092(services):
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:4.")
    assert ("9092", "9092") in published_ports(kafka)
    env = env_of(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    # a listener other containers can reach, advertised under the service name
    assert "kafka:" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_worker_is_scalable_and_configured(services):
    worker = services["worker"]
    assert "build" in worker
    assert not worker.get("ports"), "worker must not publish host ports (docker compose --scale)"
    assert "container_name" not in worker, "container_name prevents --scale"
    env = env_of(worker)
    for name in WORKER_ENV:
        assert env.get(name), f"worker env {name} missing"
    assert env["BLOGSTREAM_KAFKA_BROKER"].startswith("kafka://kafka:")
    assert "@postgres:5432/" in env["BLOGSTREAM_DATABASE_URL"]
    for name in ("OPENAI_BASE_URL", "REPLICATE_BASE_URL", "WIX_BASE_URL"):
        assert env[name].startswith("http://simulators:18080"), name
    assert "faust -A streams worker" in command_text(worker)


def test_worker_kafka_address_is_an_advertised_listener(services):
    broker = env_of(services["worker"])["BLOGSTREAM_KAFKA_BROKER"].removeprefix("kafka://")
    advertised = env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert any(listener.split("://", 1)[1] == broker for listener in advertised.split(","))


def test_postgres_on_5432(services):
    pg = services["postgres"]
    assert str(pg["image"]).startswith("postgres:15")
    assert ("5432", "5432") in published_ports(pg)
    env = env_of(pg)
    assert env["POSTGRES_DB"] == env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == "blogstream"


def test_kafka_ui_points_at_kafka(services):
    ui = services["kafka-ui"]
    assert "kafka-ui" in str(ui["image"])
    assert ("8080", "8080") in published_ports(ui)
    bootstrap = env_of(ui)["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"]
    assert bootstrap.split(":")[0] == "kafka"
    advertised = env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert bootstrap in advertised


def test_migrate_and_simulators(services):
    assert "alembic upgrade head" in command_text(services["migrate"])
    sims = services["simulators"]
    assert "python -m simulators" in command_text(sims)
    assert ("18080", "18080") in published_ports(sims)


def test_dockerfile_builds_project_image():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install ." in text
