"""Static checks of docker-compose.kafka.yml, the Dockerfile and their configs (no Docker needed).

The file is validated against the Compose Specification's JSON schema (tests/stack/compose-spec.json,
vendored from a package registry: where from is in its "$comment"), after the same ${VAR} interpolation
`docker compose` does, with the variables a user's .env would give. Then the rules of this project:
every service has a healthcheck (one-shots say they have none), the start order waits for health,
nothing is published on all interfaces, no password is written in the file, and every file it mounts
from the repository exists and agrees with the configs it stands next to.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to parse docker-compose.kafka.yml")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed to validate docker-compose.kafka.yml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.kafka.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
# What a user's .env gives (see .env.example): the required values, nothing optional.
DOT_ENV = {"POSTGRES_PASSWORD": "pw-from-dot-env", "GRAFANA_ADMIN_PASSWORD": "grafana-pw-from-dot-env"}
WORKER_ENV = (
    "BLOGSTREAM_KAFKA_BROKER",
    "BLOGSTREAM_DATABASE_URL",
    "OPENAI_BASE_URL",
    "REPLICATE_BASE_URL",
    "WIX_BASE_URL",
)
ONE_SHOTS = ("migrate", "kafka-ui-serde")
WORKER_WEB_PORT = "6066"


# --------------------------------------------------------------------------- interpolation

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable syntax: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+replacement}, ${VAR+replacement}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        is_set = name in env
        present = is_set and env[name] != ""
        if op in (":?", "?") and not (present if op == ":?" else is_set):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and not (present if op == ":-" else is_set):
            return arg
        if op in (":+", "+"):
            return arg if (present if op == ":+" else is_set) else ""
        return env.get(name, "")

    return _VAR.sub(one, value)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def raw() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, DOT_ENV)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(doc)]


def env_of(service: dict) -> dict[str, str]:
    """Compose allows `environment` as a mapping or as a list of KEY=VALUE."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port); '' where the file leaves it to Docker."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):  # long syntax
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        parts = [""] * (3 - len(parts)) + parts
        out.append((parts[0].strip("[]"), parts[1], parts[2]))
    return out


def command_text(service: dict) -> str:
    cmd = service.get("command") or ""
    return " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)


def healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test") or ""
    return " ".join(map(str, test)) if isinstance(test, list) else str(test)


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(source in the repository, target) of every ./relative bind mount."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append((volume["source"], volume["target"]))
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def walk_strings(value: Any, path: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk_strings(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


# --------------------------------------------------------------------------- the Compose Specification


def test_the_vendored_schema_is_the_compose_specification(validator):
    schema = validator.schema
    assert schema["title"] == "Compose Specification"
    assert "dclint" in schema["$comment"] and "compose-spec" in schema["$comment"]
    for key in ("services", "volumes", "configs", "networks", "secrets"):
        assert key in schema["properties"]


def test_the_file_follows_the_compose_specification(validator, compose):
    assert schema_errors(validator, compose) == []


MUTATIONS = {
    "misspelt service key": lambda d: d["services"]["worker"].__setitem__("helthcheck", {"test": ["CMD", "true"]}),
    "unknown depends_on condition": lambda d: d["services"]["worker"]["depends_on"]["kafka"].__setitem__(
        "condition", "service_ready"),
    "ports not a list": lambda d: d["services"]["postgres"].__setitem__("ports", "127.0.0.1:5432:5432"),
    "healthcheck retries not a number": lambda d: d["services"]["kafka"]["healthcheck"].__setitem__("retries", [3]),
    "unknown top-level key": lambda d: d.__setitem__("service", {}),
    "bad service name": lambda d: d["services"].__setitem__("bad name!", {"image": "x"}),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_an_invalid_copy_is_refused(validator, compose, mutation):
    """The check above can fail: each of these broken copies breaks the specification."""
    broken = copy.deepcopy(compose)
    MUTATIONS[mutation](broken)
    assert schema_errors(validator, broken), f"{mutation}: the schema accepted a broken file"


def test_required_secrets_stop_compose_with_a_pointer_to_dot_env(raw):
    for name in DOT_ENV:
        with pytest.raises(MissingVariable, match=rf"{name}: set {name} in \.env"):
            interpolate(raw, {k: v for k, v in DOT_ENV.items() if k != name})
        with pytest.raises(MissingVariable):  # an empty value in .env is refused too
            interpolate(raw, {**DOT_ENV, name: ""})


def test_env_example_lists_every_variable_and_dot_env_is_ignored(raw):
    used = {name for _, value in walk_strings(raw)
            for name in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", value.replace("$$", ""))}
    example = ROOT / ".env.example"
    listed = {line.split("=", 1)[0].strip() for line in example.read_text().splitlines()
              if "=" in line and not line.lstrip().startswith("#")}
    assert used <= listed, f".env.example misses {sorted(used - listed)}"
    assert set(DOT_ENV) <= used
    for line in example.read_text().splitlines():  # the example holds no password
        if re.match(r"\s*\w*(PASSWORD|TOKEN|API_KEY)\s*=", line):
            assert line.split("=", 1)[1].strip() == "", line
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
        assert ignored.returncode == 0, ".env must be git-ignored"
    assert "cp .env.example .env" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- services


def test_expected_services_exist(services):
    for name in ("kafka", "kafka-ui", "kafka-ui-serde", "postgres", "migrate", "simulators", "worker",
                 "prometheus", "grafana"):
        assert name in services, f"service {name!r} missing"


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name in ONE_SHOTS:  # they exit: completion is their check, the image's must not apply
            assert check == {"disable": True}, name
            assert service.get("restart") == "no", name
            continue
        assert not check.get("disable"), name
        assert check.get("test"), f"{name}: healthcheck without a test"
        assert check.get("interval") and check.get("retries"), name


def test_the_start_order_waits_for_health(services):
    def waits_for(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in (services[name].get("depends_on") or {}).items()}

    assert waits_for("migrate") == {"postgres": "service_healthy"}
    assert waits_for("worker") == {"kafka": "service_healthy", "migrate": "service_completed_successfully",
                                   "simulators": "service_healthy"}
    assert waits_for("kafka-ui") == {"kafka": "service_healthy", "kafka-ui-serde": "service_completed_successfully"}
    assert waits_for("grafana") == {"prometheus": "service_healthy"}
    for name in services:
        for dep, condition in waits_for(name).items():
            if condition == "service_healthy":
                assert dep not in ONE_SHOTS, f"{name} waits for the health of one-shot {dep}"
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOTS, f"{name} waits for {dep} to exit"


def test_healthchecks_ask_what_the_service_serves(services):
    assert "kafka-topics.sh" in healthcheck_text(services["kafka"]) and "--list" in healthcheck_text(services["kafka"])
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "/_sim/health" in healthcheck_text(services["simulators"])
    assert f"127.0.0.1:{WORKER_WEB_PORT}/health" in healthcheck_text(services["worker"])
    assert "/actuator/health" in healthcheck_text(services["kafka-ui"])
    assert "/-/ready" in healthcheck_text(services["prometheus"])
    assert "/api/health" in healthcheck_text(services["grafana"])


def test_nothing_is_published_on_all_interfaces(services):
    for name, service in services.items():
        for host_ip, host_port, container_port in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {container_port} on all interfaces"
            assert host_port, f"{name}: a random host port for {container_port}"


def test_no_password_is_written_in_the_file(raw):
    for path, value in walk_strings(raw):
        key = path.rsplit("/", 1)[-1]
        if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key):
            assert value.startswith("${") and value.endswith("}"), f"{path} is written in the file"
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
            assert password.startswith("${"), f"{path}: a password in a URL"
        assert not re.search(r"\$\{\w*(PASSWORD|SECRET|TOKEN|API_KEY)\w*:?-[^}]", value), f"{path}: a default secret"


def test_kafka_is_kraft_single_node_on_9092(services):
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:4.")
    assert ("127.0.0.1", "9092", "9092") in published_ports(kafka)
    env = env_of(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    # a listener other containers can reach, advertised under the service name
    assert "kafka:" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_worker_is_scalable_reachable_and_configured(services):
    worker = services["worker"]
    assert "build" in worker
    assert not worker.get("ports"), "workers must not publish host ports (docker compose --scale)"
    assert "container_name" not in worker, "container_name prevents --scale"
    env = env_of(worker)
    assert env.get("BLOGSTREAM_WEB_BIND") == "0.0.0.0", "the web server must listen beyond the container's loopback"
    assert env.get("BLOGSTREAM_WEB_PORT", WORKER_WEB_PORT) == WORKER_WEB_PORT
    for name in WORKER_ENV:
        assert env.get(name), f"worker env {name} missing"
    assert env["BLOGSTREAM_KAFKA_BROKER"].startswith("kafka://kafka:")
    assert env["BLOGSTREAM_DATABASE_URL"] == f"postgresql://blogstream:{DOT_ENV['POSTGRES_PASSWORD']}@postgres:5432/blogstream"
    for name in ("OPENAI_BASE_URL", "REPLICATE_BASE_URL", "WIX_BASE_URL"):
        assert env[name].startswith("http://simulators:18080"), name
    assert "faust -A streams worker" in command_text(worker)


def test_the_worker_app_takes_the_compose_environment(services):
    """The worker's environment passes streams/settings.py's checks, and the Faust app built from it
    serves its web port on every interface of the container (else Prometheus finds nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGSTREAM_")}
    env.update(env_of(services["worker"]))
    probe = (
        "import json; from streams.app import app; "
        "print(json.dumps({'bind': app.conf.web_bind, 'port': app.conf.web_port, 'broker': str(app.conf.broker[0])}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"bind": "0.0.0.0", "port": int(WORKER_WEB_PORT), "broker": "kafka://kafka:19092"}


def dot_env_values(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a .env file as compose reads an env_file (comments and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def container_env(service: dict, project_dir: Path) -> dict[str, str]:
    """The environment compose gives the service's containers: its env_file(s), then `environment` over them."""
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for entry in [files] if isinstance(files, (str, dict)) else files:
        path, required = (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
        source = project_dir / path
        if not source.exists():
            assert not required, f"env_file {path} is required but missing"
            continue
        env.update(dot_env_values(source.read_text()))
    env.update(env_of(service))
    return env


def test_settings_written_in_dot_env_reach_the_workers(raw, tmp_path):
    """README's settings are BLOGSTREAM_* variables, and .env is where a compose user writes them (its header says
    "Settings for docker-compose.kafka.yml"; docs/operations.md says to fix a bad setting "in .env"). Compose reads
    .env only to fill in ${...} in the file: a variable the file does not pass on never reaches a container. A
    spend cap (BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD) or a budget (BLOGSTREAM_OPENAI_RPM) set there was silently
    ignored: the workers ran with the defaults, no cap at all."""
    written = {"BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD": "25", "BLOGSTREAM_OPENAI_RPM": "90",
               "BLOGSTREAM_SITE_MAX_IN_FLIGHT": "3"}
    dot_env = (ROOT / ".env.example").read_text()
    for name, value in {**DOT_ENV, **written}.items():
        dot_env = re.sub(rf"^{name}=.*$", "", dot_env, flags=re.M) + f"\n{name}={value}\n"
    (tmp_path / ".env").write_text(dot_env)
    services = interpolate(raw, {**DOT_ENV, **dot_env_values(dot_env)})["services"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGSTREAM_")}
    env.update(container_env(services["worker"], tmp_path))
    probe = ("import json; from streams.settings import Settings; s = Settings.from_env(); "
             "print(json.dumps([s.global_daily_budget_usd, s.openai_rpm, s.site_max_in_flight, s.web_bind]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [25.0, 90, 3, "0.0.0.0"]  # and the file's own wins
    assert "BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD" in (ROOT / ".env.example").read_text()


def run_worker_command(service: dict, tmp_path: Path, *, container: str, env: dict[str, str]) -> list[str]:
    """The worker's command as the container runs it (exec form: argv), with `python -m streams.container_name`
    answering `container` (Docker's DNS name of the replica) and a `faust` that prints what it was started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(
        f'#!/bin/sh\n[ "$*" = "-m streams.container_name" ] && {{ [ -n "{container}" ] && echo "{container}"; exit 0; }}\n'
        'echo "unexpected python $*" >&2; exit 3\n')
    (bin_dir / "faust").write_text('#!/bin/sh\necho "pid=$$ args=$* id=${BLOGSTREAM_WORKER_ID-unset}"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    argv = service["command"]
    assert isinstance(argv, list), "exec form: the worker is PID 1 and gets compose's SIGTERM"
    started = subprocess.Popen(argv, env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stdout, stderr = started.communicate(timeout=30)
    assert started.returncode == 0, stdout + stderr
    out = stdout.split()
    assert out[0] == f"pid={started.pid}", "faust must replace the shell: it is PID 1, compose's SIGTERM goes to it"
    return out


def test_each_worker_replica_keeps_its_name_across_restarts_and_recreations(services, tmp_path):
    """A worker's name (streams/app.py, worker_identity) names its reply topic and is its Kafka group instance id:
    it must stay the same when the worker comes back and differ between live workers. Compose does not tell a
    replica its name (`<project>-worker-N`), and the host name is the container's id, new whenever compose makes
    the container again (`up --build`, a changed .env): each deploy left three reply topics behind and three
    static members to time out. The command now names the worker after its container (Docker's DNS)."""
    worker = services["worker"]
    env = container_env(worker, tmp_path)
    seen = []
    for replica in ("blogstream-worker-1", "blogstream-worker-2"):
        out = run_worker_command(worker, tmp_path, container=replica, env=env)
        assert out[1:] == ["args=-A", "streams", "worker", "-l", "info", f"id={replica}"], out
        seen.append(out[-1])
    assert len(set(seen)) == 2
    # A BLOGSTREAM_WORKER_ID in .env would be every replica's (Kafka fences all but one): the container's wins.
    out = run_worker_command(worker, tmp_path, container="blogstream-worker-3", env={**env, "BLOGSTREAM_WORKER_ID": "x"})
    assert out[-1] == "id=blogstream-worker-3"
    # No answer from Docker's DNS: no name given, so the worker takes its host name (as before).
    out = run_worker_command(worker, tmp_path, container="", env=env)
    assert out[-1] in ("id=", "id=unset"), out


def test_worker_kafka_address_is_an_advertised_listener(services):
    broker = env_of(services["worker"])["BLOGSTREAM_KAFKA_BROKER"].removeprefix("kafka://")
    advertised = env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert any(listener.split("://", 1)[1] == broker for listener in advertised.split(","))


def named_volume_at(service: dict, path: str, compose: dict) -> str | None:
    """The named volume (declared at the top level) mounted at `path` or at a folder above it, or None."""
    for volume in service.get("volumes") or []:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else str(volume).split(":")[:2]
        if source in (compose.get("volumes") or {}) and (path == target or path.startswith(target.rstrip("/") + "/")):
            return source
    return None


def test_kafka_keeps_its_topics_as_postgres_keeps_its_rows(compose, services):
    """Postgres keeps blog_generations in a named volume, across `docker compose down` and `up`; Kafka kept its log
    in the container (/tmp/kraft-combined-logs), which `down` removes: every request accepted and not finished
    (PENDING in Postgres, its record in blog.requests, blog.drafts or blog.illustrated) was lost, PENDING for good,
    with the consumer offsets and the limiter's table. Both keep their data, or neither would."""
    log_dirs = env_of(services["kafka"])["KAFKA_LOG_DIRS"].split(",")
    assert named_volume_at(services["postgres"], "/var/lib/postgresql/data", compose) == "pg-data"
    for log_dir in log_dirs:
        assert named_volume_at(services["kafka"], log_dir, compose), f"Kafka's {log_dir} is on no named volume"


def test_what_the_workers_need_comes_back_with_them(services):
    """The workers come back after a crash or a reboot (restart: unless-stopped, docs/operations.md), and so must
    what they cannot work without: Kafka, Postgres and the simulators had no restart policy, so after a reboot (or
    one of them crashing) the workers came back to nothing and waited until someone ran `docker compose up`."""
    policy = services["worker"]["restart"]
    assert policy == "unless-stopped"
    for name in services["worker"]["depends_on"]:
        if name not in ONE_SHOTS:
            assert services[name].get("restart") == policy, f"{name} does not come back with the workers"
    for name in ("kafka-ui", "prometheus", "grafana"):
        assert services[name].get("restart") == policy, name


def test_postgres_on_5432_with_the_password_from_dot_env(services):
    pg = services["postgres"]
    assert str(pg["image"]).startswith("postgres:15")
    assert ("127.0.0.1", "5432", "5432") in published_ports(pg)
    env = env_of(pg)
    assert env["POSTGRES_DB"] == env["POSTGRES_USER"] == "blogstream"
    assert env["POSTGRES_PASSWORD"] == DOT_ENV["POSTGRES_PASSWORD"]
    assert env_of(services["migrate"])["BLOGSTREAM_DATABASE_URL"] == env_of(services["worker"])["BLOGSTREAM_DATABASE_URL"]


def test_migrate_and_simulators(services):
    assert command_text(services["migrate"]).count("alembic upgrade head") == 2  # blogstream and blogstream_test
    sims = services["simulators"]
    assert "python -m simulators" in command_text(sims)
    assert env_of(sims)["SIM_HOST"] == "0.0.0.0"
    assert ("127.0.0.1", "18080", "18080") in published_ports(sims)


# --------------------------------------------------------------------------- Kafka UI and its serde


def serde_class() -> str:
    """package.Class of the class in kafka-ui-serde/ that implements kafbat's Serde."""
    found = []
    for source in (ROOT / "kafka-ui-serde/src/main/java").rglob("*.java"):
        text = source.read_text()
        m = re.search(r"class\s+(\w+)\s+implements\s+[^{]*\bSerde\b", text)
        if m:
            package = re.search(r"^package\s+([\w.]+);", text, re.M)
            found.append(f"{package[1]}.{m[1]}" if package else m[1])
    assert len(found) == 1, f"expected one Serde implementation, found {found}"
    return found[0]


def test_kafka_ui_is_kafbat_with_our_serde(services):
    ui = services["kafka-ui"]
    image = str(ui["image"])
    assert image.startswith("ghcr.io/kafbat/kafka-ui:"), "the maintained kafbat image, not provectuslabs"
    assert image.rsplit(":", 1)[1] not in ("", "latest", "main"), "a released version"
    assert ("127.0.0.1", "8080", "8080") in published_ports(ui)
    env = env_of(ui)
    bootstrap = env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"]
    assert bootstrap in env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_CLUSTERS_0_NAME"]
    assert env["KAFKA_CLUSTERS_0_SERDE_0_NAME"] == "blogstream"
    assert env["KAFKA_CLUSTERS_0_SERDE_0_CLASSNAME"] == serde_class()
    pattern = re.compile(env["KAFKA_CLUSTERS_0_SERDE_0_TOPICVALUESPATTERN"])
    for topic in ("blog.requests", "blog.drafts", "blog.illustrated", "blog.results", "blog.dlq"):
        assert pattern.fullmatch(topic), topic
    assert not pattern.fullmatch("blogstream-reply-x")
    # the jar comes from the one-shot build through a shared volume
    jar = Path(env["KAFKA_CLUSTERS_0_SERDE_0_FILEPATH"])
    final_name = re.search(r"<finalName>([^<]+)</finalName>", (ROOT / "kafka-ui-serde/pom.xml").read_text())[1]
    assert jar.name == f"{final_name}.jar"
    (volume,) = [v for v in ui["volumes"] if str(v).split(":")[1] == str(jar.parent)]
    builder = services["kafka-ui-serde"]
    assert any(str(v).split(":")[0] == str(volume).split(":")[0] for v in builder["volumes"])
    assert f"target/{jar.name}" in command_text(builder) and "mvn" in command_text(builder)


def test_the_serde_build_sees_the_pom_sources_and_schemas_where_the_pom_looks(services):
    builder = services["kafka-ui-serde"]
    mounts = dict(bind_mounts(builder))
    workdir = Path(builder["working_dir"])
    assert mounts["./kafka-ui-serde/pom.xml"] == str(workdir / "pom.xml")
    assert mounts["./kafka-ui-serde/src"] == str(workdir / "src")
    # the pom bundles ../streams/contract/schemas when it exists
    assert "../streams/contract/schemas" in (ROOT / "kafka-ui-serde/pom.xml").read_text()
    assert mounts["./streams/contract/schemas"] == str(workdir.parent / "streams/contract/schemas")


# --------------------------------------------------------------------------- Prometheus and Grafana


def test_every_mounted_repository_path_exists(services):
    mounted = []
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert source.startswith("./"), f"{name}: {source} is not in the repository"
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            mounted.append(source)
    for path in ("./ops/prometheus", "./ops/grafana/dashboards", "./ops/grafana/provisioning/dashboards",
                 "./kafka-ui-serde/src"):
        assert path in mounted, path


def test_prometheus_scrapes_every_worker_by_dns_with_our_rules(services):
    prom = services["prometheus"]
    mounts = {target: source for source, target in bind_mounts(prom)}
    assert mounts["/etc/prometheus"] == "./ops/prometheus"
    (config_flag,) = [a for a in prom["command"] if a.startswith("--config.file=")]
    config_path = config_flag.split("=", 1)[1]
    assert config_path.startswith("/etc/prometheus/")
    ours = yaml.safe_load((ROOT / "ops/prometheus" / Path(config_path).name).read_text())
    local = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    assert ours["rule_files"] == local["rule_files"]
    for rules in ours["rule_files"]:
        assert (ROOT / "ops/prometheus" / rules).exists(), rules
    (job,) = ours["scrape_configs"]
    assert job["job_name"] == local["scrape_configs"][0]["job_name"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and str(sd["port"]) == WORKER_WEB_PORT
    assert "worker" in services and str(WORKER_WEB_PORT) in [str(p) for p in services["worker"]["expose"]]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_compose_prometheus_config():
    done = subprocess.run(["promtool", "check", "config", "ops/prometheus/prometheus.compose.yml"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_gets_the_dashboard_and_a_prometheus_datasource(services, compose):
    grafana = services["grafana"]
    assert ("127.0.0.1", "3000", "3000") in published_ports(grafana)
    assert env_of(grafana)["GF_SECURITY_ADMIN_PASSWORD"] == DOT_ENV["GRAFANA_ADMIN_PASSWORD"]
    mounts = {source: target for source, target in bind_mounts(grafana)}
    assert mounts["./ops/grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    provider = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/blogstream.yml").read_text())
    (dashboards_path,) = [p["options"]["path"] for p in provider["providers"]]
    assert mounts["./ops/grafana/dashboards"] == dashboards_path
    assert (ROOT / "ops/grafana/dashboards/blogstream.json").exists()
    # the datasource: the repository's definition, but at the prometheus service
    (config,) = grafana["configs"]
    assert config["target"].startswith("/etc/grafana/provisioning/datasources/")
    ours = yaml.safe_load(compose["configs"][config["source"]]["content"])["datasources"]
    repo = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["name"], d["uid"], d["type"]) for d in ours] == [(d["name"], d["uid"], d["type"]) for d in repo]
    assert ours[0]["url"] == "http://prometheus:9090"


# --------------------------------------------------------------------------- the image


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_installs_the_lock_then_the_project_without_resolving():
    text = dockerfile()
    assert "FROM python:3.11-slim" in text
    assert re.search(r"pip install -r \S*requirements\.lock", text)
    assert re.search(r"pip install --no-deps ", text)
    assert text.index("requirements.lock") < text.index("--no-deps")
    assert "pip check" in text


def test_dockerfile_runs_as_a_user_with_a_healthcheck():
    text = dockerfile()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    (check,) = re.findall(r"^HEALTHCHECK\s.*?(?<!\\)$", text, re.M | re.S)
    assert "/health" in check and "BLOGSTREAM_WEB_PORT" in check and WORKER_WEB_PORT in check


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert patterns[0] == "*", "start from nothing, let in what the image needs"
    let_in = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile(), re.M):
        if line.startswith("--from"):
            continue
        copied.update(s.rstrip("/") for s in line.split()[:-1])
    assert copied == let_in, f"COPY without a .dockerignore line: {copied - let_in}; unused: {let_in - copied}"
    for path in copied:
        assert (ROOT / path).exists(), path
    assert not {".env", ".venv", ".stack", ".git", ".faust"} & let_in
