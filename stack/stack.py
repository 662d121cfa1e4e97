#!/usr/bin/env python3
"""Local stack for blogstream without Docker: Kafka (KRaft, Maven Central jars),
PostgreSQL (Debian binaries, private cluster) and the provider simulators.

    stack/stack.sh up | down | status | reset | env

All runtime state lives in .stack/ (git-ignored). Every server binds 127.0.0.1.
Environment overrides:
    KAFKA_PORT (19092)  KAFKA_CONTROLLER_PORT (19093)  PG_PORT (55432)  SIM_PORT (18080)
    BLOGSTREAM_STACK_DIR (<repo>/.stack)  PG_BIN (dir holding initdb/pg_ctl)
    JAVA (java)  KAFKA_HEAP_OPTS ("-Xms256m -Xmx512m")
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = Path(os.environ.get("BLOGSTREAM_STACK_DIR") or ROOT / ".stack").resolve()
VENV_PY = ROOT / ".venv" / "bin" / "python"

KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "19092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("KAFKA_CONTROLLER_PORT", "19093"))
PG_PORT = int(os.environ.get("PG_PORT", "55432"))
SIM_PORT = int(os.environ.get("SIM_PORT", "18080"))

KAFKA_SRC = ROOT / "stack" / "kafka"
KAFKA_DIR = STACK / "kafka"
KAFKA_LIBS = KAFKA_DIR / "libs"
KAFKA_DATA = KAFKA_DIR / "data"
KAFKA_PROPS = KAFKA_DIR / "server.properties"
KAFKA_LOG = KAFKA_DIR / "kafka.log"
KAFKA_PID = KAFKA_DIR / "kafka.pid"
KAFKA_CLUSTER_ID = KAFKA_DIR / "cluster.id"

PG_DIR = STACK / "pg"
PG_DATA = PG_DIR / "data"
PG_LOG = PG_DIR / "postgres.log"
PG_USER, PG_PASSWORD = "blogstream", "blogstream"
PG_DATABASES = ("blogstream", "blogstream_test")

SIM_PID = STACK / "simulators.pid"
SIM_LOG = STACK / "simulators.log"
SIM_MAIN = ROOT / "simulators" / "__main__.py"

IS_ROOT = os.geteuid() == 0
T0 = time.monotonic()


# ----------------------------------------------------------------------------- helpers
class StackError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[stack {time.monotonic() - T0:5.1f}s] {msg}", flush=True)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines)


def run(cmd: list[str], *, quiet: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its output."""
    cp = subprocess.run(cmd, capture_output=quiet, text=True, **kw)
    if cp.returncode != 0:
        out = ((cp.stdout or "") + (cp.stderr or "")).strip() if quiet else ""
        raise StackError(f"command failed ({cp.returncode}): {' '.join(cmd)}\n{out}")
    return cp


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True if pid runs (not a zombie) and, if given, its command line contains marker."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        if stat_line.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if marker is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return marker in cmdline
    except OSError:
        return marker is None
    return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(what: str, ready, alive, log: Path, timeout: float, poll: float = 0.3) -> None:
    """Until ready() is true; raises with the log's last lines if the process exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise StackError(f"{what}: process exited; last log lines ({rel(log)}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not ready after {timeout:.0f}s; see {rel(log)}:\n{tail(log)}")
        time.sleep(poll)


def rotate(log: Path, max_bytes: int = 50 * 1024 * 1024) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > max_bytes:
            log.replace(log.with_name(log.name + ".1"))


def spawn(cmd: list[str], *, log: Path, pidfile: Path, cwd: Path, env: dict | None = None) -> int:
    """Start a detached background process (own session, like nohup), stdout+stderr -> log."""
    rotate(log)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid(name: str, pid: int, marker: str, *, timeout: float, group: bool = False) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL. Only touches the recorded pid (or its own group)."""
    if not pid_alive(pid, marker):
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group and os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker):
            return
        time.sleep(0.2)
    say(f"{name}: still running after {timeout:.0f}s, sending SIGKILL")
    send(signal.SIGKILL)
    for _ in range(50):
        if not pid_alive(pid, marker):
            return
        time.sleep(0.1)


@contextlib.contextmanager
def stack_lock():
    """Serialise concurrent up/down/reset runs (several people share this tree)."""
    STACK.mkdir(parents=True, exist_ok=True)
    with open(STACK / "stack.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another stack command is running, waiting for it ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def database_url(db: str = "blogstream") -> str:
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{PG_PORT}/{db}"


def kafka_broker_url() -> str:
    return f"kafka://127.0.0.1:{KAFKA_PORT}"


# ----------------------------------------------------------------------------- kafka
def kafka_pom_digest() -> str:
    return hashlib.sha256((KAFKA_SRC / "pom.xml").read_bytes()).hexdigest()


def kafka_ensure_jars() -> None:
    stamp = KAFKA_LIBS / ".pom.sha256"
    digest = kafka_pom_digest()
    if stamp.exists() and stamp.read_text().strip() == digest and any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        return
    if not shutil.which("mvn"):
        raise StackError("mvn not found (apt-get install -y maven)")
    say("kafka: fetching jars from Maven Central (mvn dependency:copy-dependencies) ...")
    shutil.rmtree(KAFKA_LIBS, ignore_errors=True)
    KAFKA_LIBS.mkdir(parents=True)
    run(["mvn", "-q", "-B", "-f", str(KAFKA_SRC / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={KAFKA_LIBS}"])
    stamp.write_text(digest + "\n")
    say(f"kafka: {len(list(KAFKA_LIBS.glob('*.jar')))} jars in {rel(KAFKA_LIBS)}")


def kafka_props(port: int, controller_port: int, data: Path) -> str:
    """A single-node KRaft broker's server.properties."""
    return f"""# generated by stack/stack.py -- edits are overwritten at every `up`
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=12
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=3
num.io.threads=4
log.segment.bytes=16777216
log.retention.hours=72
log.retention.check.interval.ms=60000
"""


def kafka_write_props() -> None:
    KAFKA_DATA.mkdir(parents=True, exist_ok=True)
    KAFKA_PROPS.write_text(kafka_props(KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_DATA))


def java_cmd() -> list[str]:
    java = os.environ.get("JAVA") or (str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
                                      if os.environ.get("JAVA_HOME") else shutil.which("java"))
    if not java:
        raise StackError("java not found (Kafka 4.x needs Java 17+: apt-get install -y openjdk-17-jre-headless)")
    return [java, "-cp", str(KAFKA_LIBS / "*"),
            f"-Dlog4j2.configurationFile={KAFKA_SRC / 'log4j2.xml'}"]


def new_cluster_id() -> str:
    while True:  # same rules as Kafka's Uuid.randomUuid(): not zero, must not start with '-'
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-") and cid != "AAAAAAAAAAAAAAAAAAAAAA":
            return cid


def kafka_cluster_id() -> str:
    if KAFKA_CLUSTER_ID.exists():
        return KAFKA_CLUSTER_ID.read_text().strip()
    cid = new_cluster_id()
    KAFKA_CLUSTER_ID.write_text(cid + "\n")
    return cid


def kafka_format_start() -> subprocess.Popen | None:
    """Start `StorageTool format` if the log dir is not formatted yet (returns the process)."""
    if (KAFKA_DATA / "meta.properties").exists():
        return None
    cid = kafka_cluster_id()
    say(f"kafka: formatting {rel(KAFKA_DATA)} (cluster id {cid})")
    return subprocess.Popen(java_cmd() + ["kafka.tools.StorageTool", "format", "-t", cid, "-c", str(KAFKA_PROPS)],
                            cwd=KAFKA_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kafka_format_wait(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise StackError(f"kafka: format failed:\n{out}")


def kafka_running() -> int | None:
    pid = read_pid(KAFKA_PID)
    return pid if pid_alive(pid, "kafka.Kafka") else None


def kafka_server_cmd(props: Path, heap: str | None = None) -> list[str]:
    cmd = java_cmd()
    cmd[1:1] = (heap or os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")).split() + [
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
    return cmd + ["kafka.Kafka", str(props)]


def kafka_start() -> bool:
    """Start the broker unless running. Returns True if it was started now."""
    if kafka_running():
        return False
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT):
        if port_busy(port):
            raise StackError(f"kafka: port {port} is taken by another process (not our broker); "
                             "set KAFKA_PORT / KAFKA_CONTROLLER_PORT")
    pid = spawn(kafka_server_cmd(KAFKA_PROPS), log=KAFKA_LOG, pidfile=KAFKA_PID, cwd=KAFKA_DIR)
    say(f"kafka: started broker pid {pid} on 127.0.0.1:{KAFKA_PORT}")
    return True


async def _kafka_metadata(timeout_s: float, port: int = KAFKA_PORT) -> dict:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}",
                                request_timeout_ms=int(timeout_s * 1000), client_id="blogstream-stack")
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        topics = await asyncio.wait_for(admin.list_topics(), timeout_s)
        return {"cluster_id": cluster.get("cluster_id"), "brokers": cluster.get("brokers"),
                "controller_id": cluster.get("controller_id"), "topics": topics}
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def kafka_metadata(timeout_s: float = 3.0, port: int = KAFKA_PORT) -> dict | None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # called from async code (a test): a loop of its own, in a thread
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(kafka_metadata, timeout_s, port).result()
    try:
        md = asyncio.run(_kafka_metadata(timeout_s, port))
    except Exception:
        return None
    return md if md.get("brokers") else None


def kafka_wait_ready(timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        md = kafka_metadata(3.0)
        if md:
            return md
        if not kafka_running():
            raise StackError(f"kafka: broker exited during startup; last log lines ({rel(KAFKA_LOG)}):\n{tail(KAFKA_LOG)}")
        if time.monotonic() > deadline:
            raise StackError(f"kafka: no metadata after {timeout_s:.0f}s; see {rel(KAFKA_LOG)}:\n{tail(KAFKA_LOG)}")
        time.sleep(0.5)


def kafka_stop() -> None:
    pid = kafka_running()
    if not pid:
        say("kafka: not running")
    else:
        say(f"kafka: stopping pid {pid} ...")
        stop_pid("kafka", pid, "kafka.Kafka", timeout=60)
        say("kafka: stopped")
    KAFKA_PID.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- postgres
def pg_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl; matches the cluster's major version when one exists."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])

    def candidates() -> list[Path]:
        found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
                 if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists()]
        return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)

    found = candidates()
    if not found:
        if not IS_ROOT:
            raise StackError("postgres: initdb/pg_ctl not found; install the `postgresql` package")
        say("postgres: binaries missing, running apt-get install -y postgresql ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            run(["apt-get", "install", "-y", "-q", "postgresql"], env=env)
        except StackError:
            run(["apt-get", "update", "-q"], env=env)
            run(["apt-get", "install", "-y", "-q", "postgresql"], env=env)
        found = candidates()
        if not found:
            raise StackError("postgres: still no initdb/pg_ctl under /usr/lib/postgresql/*/bin")
    version_file = PG_DATA / "PG_VERSION"
    if version_file.exists():
        want = version_file.read_text().strip()
        for d in found:
            if d.parent.name == want:
                return d
        raise StackError(f"postgres: cluster in {rel(PG_DATA)} is version {want} but binaries are "
                         f"{[d.parent.name for d in found]} (stack.sh reset recreates it)")
    return found[0]


def pg_sock_dir() -> Path:
    """Unix socket dir inside .stack/pg, unless the path would exceed the 107-byte sun_path limit."""
    sock = PG_DIR / "run"
    if len(str(sock / f".s.PGSQL.{PG_PORT}.lock")) > 100:
        sock = Path("/tmp") / f"blogstream-pg-{hashlib.sha1(str(PG_DIR).encode()).hexdigest()[:10]}"
    return sock


def as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--"] + cmd if IS_ROOT else cmd


def pg_owner() -> tuple[int, int]:
    if IS_ROOT:
        pw = pwd.getpwnam("postgres")
        return pw.pw_uid, pw.pw_gid
    return os.getuid(), os.getgid()


def pg_prepare_dirs() -> None:
    sock = pg_sock_dir()
    for d in (PG_DIR, sock):
        d.mkdir(parents=True, exist_ok=True)
    uid, gid = pg_owner()
    if IS_ROOT:
        # the postgres user must be able to reach .stack/pg: every ancestor needs o+x
        for parent in [PG_DIR, *PG_DIR.parents]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                say(f"postgres: chmod o+x {parent} (postgres user must traverse it)")
                parent.chmod(mode | stat.S_IXOTH)
        for d in (PG_DIR, sock):
            if d.stat().st_uid != uid:
                for dirpath, dirnames, filenames in os.walk(d):
                    os.chown(dirpath, uid, gid)
                    for f in filenames:
                        with contextlib.suppress(FileNotFoundError):
                            os.chown(os.path.join(dirpath, f), uid, gid, follow_symlinks=False)
    sock.chmod(0o755)


def pg_write_conf() -> None:
    conf = f"""# generated by stack/stack.py -- rewritten at every `up`
listen_addresses = '127.0.0.1'
port = {PG_PORT}
unix_socket_directories = '{pg_sock_dir()}'
max_connections = 200
shared_buffers = 128MB
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = -1
"""
    path = PG_DATA / "blogstream_stack.conf"
    path.write_text(conf)
    uid, gid = pg_owner()
    os.chown(path, uid, gid)


def pg_initdb(bindir: Path) -> bool:
    if (PG_DATA / "PG_VERSION").exists():
        return False
    say(f"postgres: initdb {rel(PG_DATA)} ({bindir.parent.name})")
    if PG_DATA.exists() and not any(PG_DATA.iterdir()):
        PG_DATA.rmdir()
    run(as_pg([str(bindir / "initdb"), "-D", str(PG_DATA), "-U", "postgres", "-E", "UTF8", "--no-locale",
               "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]), cwd=PG_DIR)
    with open(PG_DATA / "postgresql.conf", "a") as fh:
        fh.write("\n# blogstream local stack settings\ninclude_if_exists = 'blogstream_stack.conf'\n")
    return True


def pg_running() -> int | None:
    """Postmaster pid if our cluster runs."""
    pid = read_pid(PG_DATA / "postmaster.pid") if (PG_DATA / "postmaster.pid").exists() else None
    return pid if pid_alive(pid, "postgres") else None


def pg_running_port() -> int | None:
    try:
        return int((PG_DATA / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return None


def pg_start(bindir: Path) -> bool:
    if pg_running():
        port = pg_running_port()
        if port and port != PG_PORT:
            raise StackError(f"postgres: already running on port {port}, not PG_PORT={PG_PORT}; run `down` first")
        return False
    if port_busy(PG_PORT):
        raise StackError(f"postgres: port {PG_PORT} is taken by another process; set PG_PORT")
    rotate(PG_LOG)
    if not PG_LOG.exists():
        PG_LOG.touch()
    uid, gid = pg_owner()
    os.chown(PG_LOG, uid, gid)
    run(as_pg([str(bindir / "pg_ctl"), "-D", str(PG_DATA), "-l", str(PG_LOG), "-w", "-t", "60", "-s", "start"]),
        cwd=PG_DIR)
    say(f"postgres: started pid {pg_running()} on 127.0.0.1:{PG_PORT}")
    return True


def psql_admin(bindir: Path, sql: str, db: str = "postgres") -> str:
    """Run SQL as the postgres superuser over the private unix socket (local auth = trust)."""
    cp = run([str(bindir / "psql"), "-h", str(pg_sock_dir()), "-p", str(PG_PORT), "-U", "postgres", "-d", db,
              "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"], input=sql, cwd=PG_DIR)
    return cp.stdout


def pg_wait_ready(bindir: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        cp = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(PG_PORT)])
        if cp.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise StackError(f"postgres: not ready after {timeout_s:.0f}s; see {rel(PG_LOG)}:\n{tail(PG_LOG)}")
        time.sleep(0.2)


def pg_bootstrap(bindir: Path) -> None:
    """Role + databases, idempotent."""
    dbs = ",".join(f"'{d}'" for d in PG_DATABASES)
    psql_admin(bindir, f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_USER}') THEN
    CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}';
  ELSE
    ALTER ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}';
  END IF;
END $$;
SELECT format('CREATE DATABASE %I OWNER {PG_USER}', d)
  FROM unnest(ARRAY[{dbs}]) AS d
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d)
\\gexec
""")


def migrate(url: str) -> str:
    """alembic upgrade head on one database; returns its revision."""
    from alembic import command
    from alembic.config import Config
    import psycopg2

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            return ",".join(r[0] for r in cur.fetchall())


def pg_migrate() -> list[str]:
    """alembic upgrade head on every stack database; returns 'db@rev' strings."""
    return [f"{db}@{migrate(database_url(db))}" for db in PG_DATABASES]


def pg_stop() -> None:
    pid = pg_running()
    if not pid:
        say("postgres: not running")
        return
    say(f"postgres: stopping pid {pid} ...")
    try:
        bindir = pg_bin_dir()
        run(as_pg([str(bindir / "pg_ctl"), "-D", str(PG_DATA), "-m", "fast", "-w", "-t", "30", "-s", "stop"]),
            cwd=PG_DIR)
    except StackError as exc:
        say(f"postgres: pg_ctl stop failed ({exc}); signalling postmaster")
        stop_pid("postgres", pid, "postgres", timeout=15)
    say("postgres: stopped")


# ----------------------------------------------------------------------------- private servers
# A throwaway broker or Postgres cluster on free ports with its own data dir, for fault
# tests and `make chaos`: they stop, kill and restart it without touching the shared stack.
PRIVATE = STACK / "private"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateKafka:
    """A single-node KRaft broker of its own: `start()`, `stop()` / `kill()`, `start()` again (same ports, same data)."""

    def __init__(self, name: str | None = None, heap: str = "-Xms128m -Xmx384m") -> None:
        self.name = name or f"kafka-{os.getpid()}-{free_port()}"
        self.dir = PRIVATE / self.name
        self.data, self.props, self.log = self.dir / "data", self.dir / "server.properties", self.dir / "kafka.log"
        self.port, self.controller_port = free_port(), free_port()
        self.heap = heap
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120.0) -> "PrivateKafka":
        if self.alive:
            return self
        kafka_ensure_jars()
        self.data.mkdir(parents=True, exist_ok=True)
        self.props.write_text(kafka_props(self.port, self.controller_port, self.data))
        if not (self.data / "meta.properties").exists():
            run(java_cmd() + ["kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(self.props)],
                cwd=self.dir)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(kafka_server_cmd(self.props, self.heap), cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        quiet = logging.getLogger("aiokafka")
        level, quiet.level = quiet.level, logging.CRITICAL  # connection errors while it boots are expected
        try:
            wait_ready(f"private kafka {self.bootstrap}", lambda: kafka_metadata(3.0, self.port) is not None,
                       lambda: self.alive, self.log, timeout)
        except BaseException:
            self.kill()  # never leave a broker behind that nobody will stop
            raise
        finally:
            quiet.setLevel(level)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """A clean shutdown (SIGTERM), SIGKILL if it takes longer than `timeout`."""
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(30)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of its own (role blogstream, database blogstream migrated), on a free port.

    Made for being stopped: no fsync, and `stop()` / `start()` keep its data.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"pg-{os.getpid()}-{free_port()}"
        self.dir = PRIVATE / self.name
        self.data, self.log = self.dir / "data", self.dir / "postgres.log"
        self.sock = Path("/tmp") / f"bs-{hashlib.sha1(str(self.dir).encode()).hexdigest()[:10]}"
        self.port = free_port()
        self.bindir: Path | None = None

    def dsn(self, db: str = "blogstream") -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{db}"

    def _pg_ctl(self, *args: str) -> None:
        assert self.bindir is not None
        run(as_pg([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]), cwd=self.dir)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and port_busy(self.port)

    def start(self, timeout: float = 60.0) -> "PrivatePostgres":
        self.bindir = self.bindir or pg_bin_dir()
        first = not (self.data / "PG_VERSION").exists()
        uid, gid = pg_owner()
        for d in (self.dir, self.sock):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, uid, gid)
        if first:
            run(as_pg([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-locale",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]), cwd=self.dir)
            with open(self.data / "postgresql.conf", "a") as fh:
                fh.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sock}'
max_connections = 200
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
timezone = 'UTC'
""")
        if not self.log.exists():
            self.log.touch()
        os.chown(self.log, uid, gid)
        self._pg_ctl("-l", str(self.log), "-w", "-t", str(int(timeout)), "-s", "start")
        if first:
            run([str(self.bindir / "psql"), "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                 "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                 f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'", "-c",
                 f"CREATE DATABASE blogstream OWNER {PG_USER}"], cwd=self.dir)
            migrate(self.dsn())
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected, a clean shutdown; `immediate`: like a crash."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", mode, "-w", "-t", "60", "-s", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(StackError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.sock, ignore_errors=True)


# ----------------------------------------------------------------------------- simulators
def sim_health(timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{SIM_PORT}/_sim/health", timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def sim_running() -> int | None:
    pid = read_pid(SIM_PID)
    return pid if pid_alive(pid, "simulators") else None


def sim_env() -> dict:
    return dict(os.environ, SIM_PORT=str(SIM_PORT), BLOGSTREAM_KAFKA_BROKER=kafka_broker_url(),
                BLOGSTREAM_DATABASE_URL=database_url(), PYTHONUNBUFFERED="1")


def sim_start() -> str:
    """Returns 'skipped' | 'running' | 'started' | 'external'."""
    if not SIM_MAIN.exists():
        say("simulators: simulators/__main__.py not found yet, skipping")
        return "skipped"
    if sim_running():
        return "running"
    if port_busy(SIM_PORT):
        if sim_health():
            say(f"simulators: something not started by the stack already answers on {SIM_PORT}, leaving it")
            return "external"
        raise StackError(f"simulators: port {SIM_PORT} is taken by another process; set SIM_PORT")
    py = str(VENV_PY if VENV_PY.exists() else sys.executable)
    pid = spawn([py, "-m", "simulators"], log=SIM_LOG, pidfile=SIM_PID, cwd=ROOT, env=sim_env())
    say(f"simulators: started pid {pid} on 127.0.0.1:{SIM_PORT}")
    return "started"


def sim_wait_ready(timeout_s: float = 30.0) -> None:
    wait_ready("simulators (/_sim/health)", sim_health, lambda: bool(sim_running()), SIM_LOG, timeout_s, poll=0.2)


def sim_stop() -> None:
    pid = sim_running()
    if not pid:
        if SIM_MAIN.exists():
            say("simulators: not running")
    else:
        say(f"simulators: stopping pid {pid} ...")
        stop_pid("simulators", pid, "simulators", timeout=10, group=True)
        say("simulators: stopped")
    SIM_PID.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- commands
def cmd_up() -> int:
    with stack_lock():
        KAFKA_DIR.mkdir(parents=True, exist_ok=True)
        kafka_ensure_jars()
        kafka_write_props()
        fmt = kafka_format_start()  # runs (JVM, ~2s) while postgres initialises

        bindir = pg_bin_dir()
        pg_prepare_dirs()
        pg_initdb(bindir)
        pg_write_conf()

        kafka_format_wait(fmt)
        k_started = kafka_start()
        sim_state = sim_start()
        p_started = pg_start(bindir)
        if not p_started:
            say(f"postgres: already running (pid {pg_running()})")
        pg_wait_ready(bindir)
        pg_bootstrap(bindir)
        revs = pg_migrate()
        say(f"postgres: ready, migrated {' '.join(revs)}")

        md = kafka_wait_ready(60)
        say(f"kafka: {'ready' if k_started else 'already running, ready'} "
            f"(cluster {md['cluster_id']}, {len(md['topics'])} topics)")

        if sim_state in ("started", "running"):
            sim_wait_ready(30)
            say(f"simulators: {'ready' if sim_state == 'started' else 'already running, ready'}")

    print(f"\nblogstream stack is UP ({time.monotonic() - T0:.1f}s)")
    print(f"  kafka       127.0.0.1:{KAFKA_PORT} (controller {KAFKA_CONTROLLER_PORT})   log {rel(KAFKA_LOG)}")
    print(f"  postgres    127.0.0.1:{PG_PORT} db {'/'.join(PG_DATABASES)} user/pw {PG_USER}/{PG_PASSWORD}"
          f"   log {rel(PG_LOG)}")
    if sim_state == "external":
        print(f"  simulators  http://127.0.0.1:{SIM_PORT}   (already running, not started/stopped by the stack)")
    elif sim_state != "skipped":
        print(f"  simulators  http://127.0.0.1:{SIM_PORT}   log {rel(SIM_LOG)}")
    print(f"  env: BLOGSTREAM_KAFKA_BROKER={kafka_broker_url()} BLOGSTREAM_DATABASE_URL={database_url()}")
    return 0


def cmd_down() -> int:
    with stack_lock():
        sim_stop()
        kafka_stop()
        pg_stop()
    print("blogstream stack is DOWN")
    return 0


def cmd_status() -> int:
    ok = True
    pid = kafka_running()
    if pid:
        md = kafka_metadata(3.0)
        state = (f"up, metadata ok ({len(md['topics'])} topics)" if md else "process up, metadata NOT answering")
        ok &= bool(md)
    else:
        state, ok = "down", False
    print(f"kafka       {state:45s} pid={pid or '-'} 127.0.0.1:{KAFKA_PORT}  log {rel(KAFKA_LOG)}")

    pid = pg_running()
    if pid:
        port = pg_running_port() or PG_PORT
        ready = port_busy(port)
        state = "up, accepting connections" if ready else "process up, port NOT answering"
        ok &= ready
    else:
        port, state, ok = PG_PORT, "down", False
    print(f"postgres    {state:45s} pid={pid or '-'} 127.0.0.1:{port}  log {rel(PG_LOG)}")

    if SIM_MAIN.exists():
        pid = sim_running()
        healthy = sim_health()
        if pid:
            state = "up, /_sim/health 200" if healthy else "process up, health NOT 200"
        else:
            state = "up (not started by stack), /_sim/health 200" if healthy else "down"
        ok &= healthy
        print(f"simulators  {state:45s} pid={pid or '-'} 127.0.0.1:{SIM_PORT}  log {rel(SIM_LOG)}")
    else:
        print("simulators  (simulators/__main__.py not present)")
    return 0 if ok else 1


def cmd_reset() -> int:
    cmd_down()
    with stack_lock():
        sock = pg_sock_dir()
        for p in (KAFKA_DATA, PG_DIR):
            if p.exists():
                say(f"reset: removing {rel(p)}")
                shutil.rmtree(p)
        if sock.exists() and not sock.is_relative_to(STACK):
            shutil.rmtree(sock, ignore_errors=True)
        for f in (KAFKA_CLUSTER_ID, KAFKA_PROPS):
            f.unlink(missing_ok=True)
    print("blogstream stack is RESET (kafka jars kept)")
    return 0


def cmd_env() -> int:
    print(f"export BLOGSTREAM_KAFKA_BROKER={kafka_broker_url()}")
    print(f"export BLOGSTREAM_DATABASE_URL={database_url()}")
    print(f"export BLOGSTREAM_TEST_DATABASE_URL={database_url('blogstream_test')}")
    print(f"export SIM_PORT={SIM_PORT}")
    return 0


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "reset": cmd_reset, "env": cmd_env}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: stack/stack.sh {{{'|'.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # retries while the broker boots are expected
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return COMMANDS[argv[0]]()
    except StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
