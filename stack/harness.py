"""Drive a whole pipeline on the local stack: workers, requests, simulators, outcomes.

Shared by the integration tests, the demo and the benchmarks. Each `Pipeline`
gets its own topic prefix and Faust app id, so runs never read each other's
events, and its own web ports for the workers it starts.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("BLOGSTREAM_STACK_DIR", ROOT / ".stack"))
SIM_URL = f"http://127.0.0.1:{os.environ.get('SIM_PORT', '18080')}"
KAFKA = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '19092')}"
PG_PORT = os.environ.get("PG_PORT", "55432")


def database_url(db: str = "blogstream") -> str:
    return f"postgresql://blogstream:blogstream@127.0.0.1:{PG_PORT}/{db}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- simulators


class Simulators:
    """The provider simulators' control API (`/_sim/...`).

    `Simulators.start()` runs a private simulator process on a free port, so a
    test or benchmark never shares limits, windows or ledgers with another.
    """

    def __init__(self, url: str = SIM_URL, proc: subprocess.Popen | None = None) -> None:
        self.url = url
        self.proc = proc
        self.http = httpx.Client(base_url=url, timeout=30)

    @classmethod
    def start(cls, config: dict[str, Any] | None = None, timeout: float = 30) -> "Simulators":
        port = free_port()
        log = (STACK_DIR / "logs").resolve()
        log.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", "--port", str(port)], cwd=ROOT,
            stdout=(log / f"simulators-{port}.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        sims = cls(f"http://127.0.0.1:{port}", proc)
        deadline = time.time() + timeout
        while True:
            try:
                if sims.http.get("/_sim/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the simulators did not start on port {port}")
            time.sleep(0.1)
        if config:
            sims.configure(config)
        return sims

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def base_urls(self) -> dict[str, str]:
        """Where the workers' provider clients point (the same variables real keys use)."""
        return {
            "OPENAI_BASE_URL": f"{self.url}/openai/v1",
            "REPLICATE_BASE_URL": f"{self.url}/replicate",
            "WIX_BASE_URL": f"{self.url}/wix",
        }

    def reset(self) -> None:
        self.http.post("/_sim/reset").raise_for_status()

    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/_sim/config", json=patch)
        r.raise_for_status()
        return r.json()

    def ledger(self) -> dict[str, Any]:
        return self.http.get("/_sim/ledger").json()

    def events(self, provider: str, since: float = 0.0) -> list[list[Any]]:
        return self.http.get("/_sim/events", params={"provider": provider, "since": since}).json()


# --------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """One `faust -A streams worker` process."""

    name: str
    env: dict[str, str]
    web_port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/faust"), "-A", "streams", "worker", "-l", "info", "--web-port", str(self.web_port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit, no flush, like a crashed machine."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Pipeline:
    """A private pipeline (own topics, own consumer group) on the shared local stack."""

    name: str = field(default_factory=lambda: f"run{uuid.uuid4().hex[:8]}")
    database: str = "blogstream_test"
    sim_url: str = SIM_URL
    settings: dict[str, Any] = field(default_factory=dict)  # Settings overrides, e.g. {"openai_rpm": 60}
    workers: list[Worker] = field(default_factory=list)
    log_dir: Path = STACK_DIR / "logs"

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    def env(self, **extra: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BLOGSTREAM_APP_ID=self.name,
            BLOGSTREAM_TOPIC_PREFIX=self.prefix,
            BLOGSTREAM_KAFKA_BROKER=f"kafka://{KAFKA}",
            BLOGSTREAM_DATABASE_URL=database_url(self.database),
            BLOGSTREAM_DATA_DIR=str(STACK_DIR / "faust" / self.name),
            PYTHONUNBUFFERED="1",
            # This tree first: the .venv's editable install maps `streams` to the checkout it was
            # installed from, so a worker started from another checkout sharing that .venv (a
            # baseline clone in a paired benchmark) would otherwise run the other tree's code.
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            OPENAI_BASE_URL=f"{self.sim_url}/openai/v1",
            REPLICATE_BASE_URL=f"{self.sim_url}/replicate",
            WIX_BASE_URL=f"{self.sim_url}/wix",
        )
        for key, value in {**self.settings, **extra}.items():
            env[f"BLOGSTREAM_{key.upper()}"] = str(value)
        return env

    def start_worker(self, **extra: Any) -> Worker:
        n = len(self.workers) + 1
        worker = Worker(f"{self.name}-w{n}", self.env(**extra), free_port(), self.log_dir / f"{self.name}-w{n}.log")
        self.workers.append(worker.start())
        return worker

    def stop(self, *, delete_topics: bool = True) -> None:
        for worker in self.workers:
            worker.stop()
        if delete_topics:
            # In a thread: stop() is called from sync and async code alike.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self.delete_topics()).result()

    async def delete_topics(self) -> None:
        """Drop this pipeline's topics (its own, changelogs, reply topics): thousands of
        leftover partitions slow the broker down for every later run."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        try:
            await admin.start()
            mine = [t for t in await admin.list_topics() if t.startswith((f"{self.name}.", f"{self.name}-"))]
            if mine:
                await admin.delete_topics(mine, timeout_ms=30_000)
        except Exception as exc:  # leftovers cost speed, not correctness
            print(f"[harness] could not delete topics of {self.name}: {exc!r}")
        finally:
            await admin.close()

    async def wait_ready(self, timeout: float = 120) -> None:
        """Until every worker serves HTTP and the limiter coordinator answers through it."""
        deadline = time.time() + timeout
        async with httpx.AsyncClient(timeout=10) as http:
            for worker in self.workers:
                while True:
                    if not worker.alive:
                        raise RuntimeError(f"{worker.name} exited:\n{worker.log_text()[-3000:]}")
                    # The limiter's figures need the admin token when one is set (streams/api/access.py).
                    token = worker.env.get("BLOGSTREAM_ADMIN_TOKEN") or worker.env.get("BLOGSTREAM_INTAKE_TOKEN")
                    auth = {"Authorization": f"Bearer {token}"} if token else {}
                    try:
                        if (await http.get(worker.url("/api/limiter"), headers=auth)).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.time() > deadline:
                        raise TimeoutError(f"{worker.name} not ready after {timeout} s")
                    await asyncio.sleep(0.5)

    # --- requests ----------------------------------------------------------
    def request(self, site_id: str, n: int = 0, **fields: Any) -> dict[str, Any]:
        return {
            "request_id": fields.pop("request_id", f"{self.name}-{site_id}-{n}-{uuid.uuid4().hex[:6]}"),
            "site_id": site_id,
            "topic": fields.pop("topic", f"Care guide number {n} for {site_id} products"),
            "keywords": fields.pop("keywords", ["care", "guide"]),
            "language": "en",
            "tone": "friendly",
            "target_words": fields.pop("target_words", 300),
            "requested_at": int(time.time() * 1000),
            "audience": None,
            **fields,
        }

    async def submit(self, requests: Iterable[dict[str, Any]], *, raw: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Produce requests (Avro) and optional raw (key, value) bytes to blog.requests."""
        from aiokafka import AIOKafkaProducer

        from streams.contract import encode

        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
        await producer.start()
        try:
            futures = [
                await producer.send(f"{self.prefix}blog.requests", key=r["site_id"].encode(), value=encode("BlogRequest", r))
                for r in requests
            ]
            futures += [await producer.send(f"{self.prefix}blog.requests", key=k, value=v) for k, v in raw]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def wait_for_topics(self, timeout: float = 60) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            deadline = time.time() + timeout
            while f"{self.prefix}blog.requests" not in set(await admin.list_topics()):
                if time.time() > deadline:
                    raise TimeoutError("the worker did not create its topics")
                await asyncio.sleep(0.5)
        finally:
            await admin.close()

    async def read_topic(self, name: str, timeout: float = 5.0) -> list[Any]:
        """Every record currently in one of this pipeline's topics."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            f"{self.prefix}{name}", bootstrap_servers=KAFKA, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )
        await consumer.start()
        try:
            out = []
            batches = await consumer.getmany(timeout_ms=int(timeout * 1000))
            while batches:
                for msgs in batches.values():
                    out.extend(msgs)
                batches = await consumer.getmany(timeout_ms=1000)
            return out
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------- database


TEMPLATE_DB = "blogstream_template"
# Held (pg_advisory_lock, database postgres) by the process that creates and migrates the template:
# with `make test`'s two integration processes, both found it missing on a fresh machine and both ran
# CREATE DATABASE (one failed: DuplicateDatabaseError, 1 of 3 tries here) and alembic side by side.
TEMPLATE_LOCK = 0x74706C74  # "tplt"
_template_ready = False


def _migrate(db: str) -> None:
    env = dict(os.environ, BLOGSTREAM_DATABASE_URL=database_url(db))
    subprocess.run([str(ROOT / ".venv/bin/alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


async def drop_database(admin_dsn: str, name: str, tries: int = 20) -> None:
    """Drop a scratch database, ending our own connections to it first.

    Not `DROP DATABASE ... WITH (FORCE)`: FORCE also terminates an autovacuum worker that happens to be
    on the new database, which only a member of pg_signal_backend may do, and our role is not (CI
    failed on that once). A plain DROP cancels autovacuum itself; what is left to end is the
    connections of our own role (a worker's pool still closing), which any role may terminate.
    """
    admin = await asyncpg.connect(admin_dsn)
    try:
        for attempt in range(tries):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
                name,
            )
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except asyncpg.ObjectInUseError:  # a connection came in between, or autovacuum was slow to go
                if attempt == tries - 1:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await admin.close()


class Outcomes:
    """Reads and prepares `blog_generations` and `sites` for a run.

    `Outcomes.private()` makes a fresh database (a copy of a migrated template),
    so concurrent tests and benchmarks never see each other's rows.
    """

    def __init__(self, dsn: str, database: str | None = None) -> None:
        self.dsn = dsn
        self.database = database

    @classmethod
    async def private(cls) -> "Outcomes":
        global _template_ready
        admin = await asyncpg.connect(database_url("postgres"))
        try:
            if not _template_ready:
                await admin.execute("SELECT pg_advisory_lock($1)", TEMPLATE_LOCK)
                try:
                    if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEMPLATE_DB):
                        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
                    await asyncio.to_thread(_migrate, TEMPLATE_DB)
                finally:
                    await admin.execute("SELECT pg_advisory_unlock($1)", TEMPLATE_LOCK)
                _template_ready = True
            name = f"bs_{uuid.uuid4().hex[:12]}"
            for attempt in range(20):
                try:
                    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
                    break
                except asyncpg.ObjectInUseError:  # someone is migrating the template right now
                    await asyncio.sleep(0.5)
            return cls(database_url(name), name)
        finally:
            await admin.close()

    async def drop(self) -> None:
        if self.database is None:
            return
        await drop_database(database_url("postgres"), self.database)

    async def _conn(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)

    async def clear(self) -> None:
        conn = await self._conn()
        try:
            await conn.execute("TRUNCATE blog_generations, stage_outputs, sites")
        finally:
            await conn.close()

    async def add_sites(self, site_ids: Iterable[str], **controls: Any) -> None:
        conn = await self._conn()
        try:
            for site_id in site_ids:
                await conn.execute(
                    """INSERT INTO sites (site_id, name, wix_api_key, weight, max_in_flight, max_queued, paused)
                       VALUES ($1, $1, $2, $3, $4, $5, $6)
                       ON CONFLICT (site_id) DO UPDATE SET weight = EXCLUDED.weight,
                         max_in_flight = EXCLUDED.max_in_flight, max_queued = EXCLUDED.max_queued,
                         paused = EXCLUDED.paused, updated_at = now()""",
                    site_id, f"wix-key-{site_id}", float(controls.get("weight", 1.0)),
                    int(controls.get("max_in_flight", 20)), int(controls.get("max_queued", 1000)),
                    bool(controls.get("paused", False)),
                )
        finally:
            await conn.close()

    async def rows(self, request_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        conn = await self._conn()
        try:
            if request_ids is None:
                records = await conn.fetch("SELECT * FROM blog_generations")
            else:
                records = await conn.fetch("SELECT * FROM blog_generations WHERE id = ANY($1::text[])", list(request_ids))
            return {r["id"]: dict(r) for r in records}
        finally:
            await conn.close()

    async def wait_final(
        self, request_ids: list[str], *, timeout: float, progress: Any = None, poll: float = 0.5,
        workers: list[Worker] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Until every request is DONE/FAILED/CANCELLED (or the timeout passes)."""
        deadline = time.time() + timeout
        while True:
            if workers and not any(w.alive for w in workers):
                raise RuntimeError("every worker exited; last log lines:\n" + workers[-1].log_text()[-3000:])
            rows = await self.rows(request_ids)
            final = sum(1 for r in rows.values() if r["status"] != "PENDING")
            if progress is not None:
                progress(final, len(request_ids), rows)
            if final == len(request_ids) or time.time() > deadline:
                return rows
            await asyncio.sleep(poll)


def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    print()
