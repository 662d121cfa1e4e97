"""Benchmark of the HTTP intake (issue 5): 5,000 concurrent clients at once, then a flood above the queue limit.

    .venv/bin/python -m stack.bench_intake            # writes docs/bench-intake.md and prints the table
    .venv/bin/python -m stack.bench_intake --quick    # 1,000 clients and a short flood, for a smoke run

One worker (the default settings: QUEUE_SIZE_LIMIT 10,000, no intake token) on a
private simulator process and database. The simulator's limits are raised and
its latencies cut so the pipeline drains fast: this measures the front door,
not the providers.

1. burst: N clients each open a keep-alive connection, then all send one
   request at the same moment. Latency = from that client's send to the end of
   its response, as the client sees it (includes all queueing in the worker).
2. batches: 20 clients POST batches of 100 (what `blogstream submit` does) back
   to back until the queue is full: accepted requests per second with batching.
3. flood: C clients send single requests back to back for T seconds, ignoring
   Retry-After, with the queue at its limit: it must stay there, answering 429
   to everything the pipeline has no room for, while the pipeline keeps draining.
4. drain: every accepted request must reach DONE or FAILED; none may be lost,
   and no refused request may show up in the table.

The true pending figure over time is rebuilt afterwards from the client's 202
times and the rows' finished_at, so "max pending" is not the intake's own
estimate but what really was accepted and unfinished at any moment.

The clients are raw HTTP/1.1 on bare asyncio protocols over uvloop (a few
microseconds per request), so the client process leaves as much of the 2 cores
as possible to the worker, Kafka and Postgres it is measuring, and stamps each
answer the moment its last byte arrives. Latency is still per client, from just
before its request is written to its complete response; a 202 still means the
broker acknowledged the record.

    .venv/bin/python -m stack.bench_intake --burst-only [--profile FILE]

runs only the burst (quick iterations) and prints the CPU every process used
during it; --profile records the worker with py-spy meanwhile.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import signal
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import asyncpg
import httpx

from stack.harness import ROOT, Outcomes, Pipeline, Simulators

DOC = ROOT / "docs" / "bench-intake.md"
SITES = [f"bench-site-{i:02d}" for i in range(20)]
BATCH = 100  # requests per POST in the batch phase (what `blogstream submit` sends)

# Providers out of the way: huge limits, millisecond latencies.
SIM_CONFIG = {
    "window_seconds": 60,
    "latency_scale": 1.0,
    "openai": {"rpm": 10_000_000, "tpm": 10_000_000_000, "latency": [0.01, 0.03], "error_rate": 0, "external_rpm": 0},
    "replicate": {"create_rpm": 10_000_000, "other_rpm": 10_000_000, "latency": [0.01, 0.03], "error_rate": 0,
                  "external_rpm": 0},
    "wix": {"site_rpm": 10_000_000, "latency_import": [0.005, 0.01], "latency_create": [0.005, 0.01],
            "latency_publish": 0.0, "latency_other": 0.0, "error_rate": 0, "external_rpm": 0},
}
WORKER_SETTINGS = {
    "openai_rpm": 12_000,
    "openai_tpm": 30_000_000,
    "replicate_rpm": 12_000,
    "wix_site_rpm": 6_000,
    # With the default 200 provider calls in flight per stage, one worker on 2 busy cores
    # holding a 10,000-request backlog answers its permit asks so late that they lapse,
    # and it finishes well under 1 request/s; with 50 it drains at about 20/s.
    "stage_concurrency": 50,
}


# --------------------------------------------------------------------------- a lean HTTP/1.1 client


class Conn(asyncio.Protocol):
    """One keep-alive connection, as a bare asyncio protocol; `post` returns (status, headers, body).

    `latency` is the time from just before the request was written to the moment
    its whole response (head and Content-Length body) had arrived, taken in
    `data_received` itself: the client's own scheduling after that does not count,
    and it costs a few microseconds per request, so 5,000 clients neither take
    the CPU the worker needs nor make the answers look later than they were.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self.sent_at = 0.0
        self.answered_at = 0.0

    @property
    def latency(self) -> float:
        return self.answered_at - self.sent_at

    async def open(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("closed by the server"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        total = end + 4 + int(headers.get("content-length", "0"))
        if len(self._buffer) < total:
            return
        self.answered_at = time.perf_counter()
        body = bytes(self._buffer[end + 4 : total])
        del self._buffer[:total]
        waiter.set_result((int(lines[0].split(" ", 2)[1]), headers, body))

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def post(self, path: str, body: bytes, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        if self.transport is None or self.transport.is_closing():
            self._buffer.clear()
            await self.open()
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_exception(asyncio.TimeoutError()))
        self.sent_at = time.perf_counter()
        self.transport.write(head + body)
        try:
            status, headers, data = await waiter
        except (ConnectionError, asyncio.TimeoutError):
            await self.close()
            raise
        finally:
            timer.cancel()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, data


# --------------------------------------------------------------------------- recording


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, every answered request
    accepted_latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # no HTTP answer at all (connection reset, timeout)
    accepted: list[tuple[str, float]] = field(default_factory=list)  # (request id, wall time of the 202)
    wall: float = 0.0

    def record(self, status: int, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)
        if status == 202:
            self.accepted_latencies.append(latency)

    async def post(self, conn: "Conn", body: bytes, request_ids: list[str]) -> int | None:
        """POST one submission and count its answer; None when no answer came."""
        try:
            status, _, _ = await conn.post("/api/blogs", body)
        except Exception:
            self.errors += 1
            return None
        self.record(status, conn.latency)
        if status == 202:
            now = time.time()
            self.accepted.extend((i, now) for i in request_ids)
        return status

    @property
    def n_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


def payload(request_id: str, site: str) -> bytes:
    return json.dumps(
        {"request_id": request_id, "site_id": site, "topic": f"Seasonal care guide {request_id}",
         "keywords": ["care", "guide", "season"], "tone": "friendly", "target_words": 300}
    ).encode()


# --------------------------------------------------------------------------- phases


async def open_all(port: int, n: int) -> tuple[list[Conn], float]:
    conns = [Conn("127.0.0.1", port) for _ in range(n)]
    gate = asyncio.Semaphore(200)  # no SYN flood: connecting is not what is measured

    async def one(conn: Conn) -> None:
        async with gate:
            await conn.open()

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in conns))
    return conns, time.perf_counter() - started


async def burst(conns: list[Conn], run: str) -> Phase:
    phase = Phase("burst")
    go = asyncio.Event()
    ready = 0

    async def client(i: int, conn: Conn) -> None:
        nonlocal ready
        request_id = f"{run}-b-{i}"
        body = payload(request_id, SITES[i % len(SITES)])
        ready += 1
        await go.wait()
        await phase.post(conn, body, [request_id])

    tasks = [asyncio.ensure_future(client(i, c)) for i, c in enumerate(conns)]
    while ready < len(conns):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    phase.wall = time.perf_counter() - started
    return phase


async def flood(conns: list[Conn], run: str, seconds: float, watch: "Watcher") -> Phase:
    phase = Phase("flood")
    stop_at = time.perf_counter() + seconds
    counter = 0

    async def client(conn: Conn) -> None:
        nonlocal counter
        while time.perf_counter() < stop_at:
            counter += 1
            request_id = f"{run}-f-{counter}"
            await phase.post(conn, payload(request_id, random.choice(SITES)), [request_id])

    watching = asyncio.ensure_future(watch.run())
    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    phase.wall = time.perf_counter() - started
    watching.cancel()
    return phase


async def batch_fill(conns: list[Conn], run: str, size: int, room: int) -> Phase:
    """Clients POST batches of `size` back to back until `room` requests are accepted or a 429 comes."""
    phase = Phase("batches")
    counter = 0
    accepted = 0
    full = False

    async def client(conn: Conn) -> None:
        nonlocal counter, accepted, full
        while not full and accepted + size <= room:
            ids = []
            for _ in range(size):
                counter += 1
                ids.append(f"{run}-m-{counter}")
            body = b'{"requests":[' + b",".join(payload(i, random.choice(SITES)) for i in ids) + b"]}"
            status = await phase.post(conn, body, ids)
            if status == 202:
                accepted += size
            elif status == 429:
                full = True

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    phase.wall = time.perf_counter() - started
    return phase


class Watcher:
    """Samples the worker's own pending figure while the flood runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.max_figure = 0
        self.samples = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                try:
                    figure = (await http.get(f"{self.url}/api/intake")).json()["pending"]
                    self.max_figure = max(self.max_figure, figure)
                    self.samples += 1
                except Exception:
                    pass
                await asyncio.sleep(0.25)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(worker_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process on the machine, grouped: the worker, this client, Kafka, Postgres, the rest."""
    groups = {"worker": 0.0, "clients (this process)": 0.0, "kafka": 0.0, "postgres": 0.0, "other": 0.0}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pid = int(entry.name)
        if pid == worker_pid:
            group = "worker"
        elif pid == me:
            group = "clients (this process)"
        elif b"kafka.Kafka" in cmdline:
            group = "kafka"
        elif name.startswith("postgres"):
            group = "postgres"
        else:
            group = "other"
        groups[group] += seconds
    return groups


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def true_max_pending(accepted: list[tuple[str, float]], finished: dict[str, float]) -> int:
    """max over time of (accepted so far - finished so far), from 202 times and finished_at."""
    events = sorted([(t, 1) for _, t in accepted] + [(t, -1) for t in finished.values()])
    level = best = 0
    for _, step in events:
        level += step
        best = max(best, level)
    return best


def accepted_rate(accepted: list[tuple[str, float]], window: float = 1.0) -> float:
    """Best accepted-per-second over any `window`-second span (from the 202 times)."""
    times = sorted(t for _, t in accepted)
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_right(times, t + window)
        best = max(best, j - i)
    return best / window


# --------------------------------------------------------------------------- the run


class DrainStalled(Exception):
    pass


def start_profiler(path: str, pid: int) -> subprocess.Popen:
    """py-spy sampling the worker until stopped (only samples holding the GIL, i.e. running Python: the
    CPU split between its threads); the format follows the file name."""
    fmt = "speedscope" if path.endswith(".json") else "raw" if path.endswith((".txt", ".raw")) else "flamegraph"
    spy = subprocess.Popen(
        [str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(pid), "-o", path, "--format", fmt, "--rate", "200", "--gil", *os.environ.get("PYSPY_ARGS", "").split()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attached before the burst starts
    return spy


def stop_profiler(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()


async def wait_rows(outcomes: Outcomes, ids: list[str], timeout: float = 120.0) -> int:
    """How many accepted ids still have no row once every one has one (or the timeout passed)."""
    deadline = time.time() + timeout
    while True:
        missing = len(set(ids) - set(await outcomes.rows(ids)))
        if missing == 0 or time.time() > deadline:
            return missing
        await asyncio.sleep(1.0)


@asynccontextmanager
async def intake_worker() -> AsyncIterator[tuple[Outcomes, Pipeline, Any]]:
    """One worker on a private simulator and database, the benchmark's sites registered."""
    sim = Simulators.start(SIM_CONFIG)
    outcomes = await Outcomes.private()
    pipeline = Pipeline(database=outcomes.database, sim_url=sim.url, settings=dict(WORKER_SETTINGS))
    try:
        await outcomes.add_sites(SITES, max_queued=10_000, max_in_flight=200)
        worker = pipeline.start_worker()
        await pipeline.wait_ready()
        yield outcomes, pipeline, worker
    finally:
        pipeline.stop()
        sim.stop()
        await outcomes.drop()


async def burst_only(clients: int, profile: str | None) -> dict[str, Any]:
    """Only the burst (for quick iterations): figures, CPU by process, and that every 202 got its row."""
    async with intake_worker() as (outcomes, pipeline, worker):
        conns, connect_seconds = await open_all(worker.web_port, clients)
        print(f"connected {clients} in {connect_seconds:.1f} s; all send at once ...", flush=True)
        await asyncio.sleep(2.0)  # let the connecting settle
        spy = start_profiler(profile, worker.proc.pid) if profile else None
        groups_before, busy_before = cpu_by_process(worker.proc.pid), machine_busy_seconds()
        b = await burst(conns, pipeline.name)
        groups_after, busy_after = cpu_by_process(worker.proc.pid), machine_busy_seconds()
        if spy is not None:
            stop_profiler(spy)
        for conn in conns:
            await conn.close()
        lost = await wait_rows(outcomes, [i for i, _ in b.accepted])
        return {
            "burst": b,
            "cpu": {k: groups_after[k] - groups_before[k] for k in groups_before},
            "machine": (busy_after[0] - busy_before[0], busy_after[1] - busy_before[1]),
            "lost": lost,
        }


def burst_report(r: dict[str, Any]) -> str:
    b: Phase = r["burst"]
    accepted = b.statuses.get(202, 0)
    busy, total = r["machine"]
    lines = [
        f"burst: {sum(b.statuses.values()):,} answered {json.dumps(b.statuses)}, {b.errors} without answer, "
        f"{b.n_5xx} 5xx, {r['lost']} accepted without a row",
        f"accepted/s {accepted / b.wall:,.0f} (wall {b.wall:.2f} s); latency p50 {ms(pct(b.latencies, 50))} "
        f"p99 {ms(pct(b.latencies, 99))} max {ms(max(b.latencies, default=0))}",
        f"machine CPU busy {busy:.2f} of {total:.2f} core-seconds ({100 * busy / max(total, 1e-9):.0f}%)",
    ]
    for name, seconds in r["cpu"].items():
        lines.append(f"  {name:24s} {seconds:6.2f} s  {1000 * seconds / max(1, accepted):.3f} ms per accepted request")
    return "\n".join(lines)


async def run(
    clients: int, flood_clients: int, flood_seconds: float, drain_timeout: float, stall_seconds: float = 300.0
) -> dict[str, Any]:
    async with intake_worker() as (outcomes, pipeline, worker):
        async with httpx.AsyncClient(timeout=10) as http:
            limit = (await http.get(worker.url("/api/intake"))).json()["queue_size_limit"]
        print(f"worker ready; {clients} clients connecting ...", flush=True)

        conns, connect_seconds = await open_all(worker.web_port, clients)
        print(f"connected in {connect_seconds:.1f} s; all send at once ...", flush=True)
        await asyncio.sleep(2.0)  # let the connecting settle
        cpu_before, client_cpu_before = cpu_seconds(worker.proc.pid), cpu_seconds(os.getpid())
        b = await burst(conns, pipeline.name)
        burst_cpu = cpu_seconds(worker.proc.pid) - cpu_before
        client_cpu = cpu_seconds(os.getpid()) - client_cpu_before
        print(f"burst: {b.statuses} in {b.wall:.2f} s", flush=True)
        for conn in conns[flood_clients:]:
            await conn.close()

        batch_clients = conns[:20]
        print(f"batches: {len(batch_clients)} clients x {BATCH} requests, until {limit - clients:,} more are accepted ...",
              flush=True)
        cpu_before = cpu_seconds(worker.proc.pid)
        m = await batch_fill(batch_clients, pipeline.name, BATCH, room=limit - clients)
        batch_cpu = cpu_seconds(worker.proc.pid) - cpu_before
        print(f"batches: {m.statuses} in {m.wall:.2f} s", flush=True)

        watch = Watcher(worker.url())
        print(f"flood: {flood_clients} clients for {flood_seconds:.0f} s ...", flush=True)
        f = await flood(conns[:flood_clients], pipeline.name, flood_seconds, watch)
        print(f"flood: {f.statuses} in {f.wall:.1f} s", flush=True)
        for conn in conns[:flood_clients]:
            await conn.close()

        accepted = b.accepted + m.accepted + f.accepted
        ids = [i for i, _ in accepted]
        print(f"draining {len(ids)} accepted requests ...", flush=True)
        drain_started = time.time()
        progress = {"final": -1, "since": time.time()}

        def stalled(final: int, total: int, _rows: Any) -> None:
            if final != progress["final"]:
                progress.update(final=final, since=time.time())
                print(f"  {final:,}/{total:,} final", flush=True)
            elif time.time() - progress["since"] > stall_seconds:
                raise DrainStalled(f"no request finished for {stall_seconds:.0f} s ({final:,}/{total:,} final)")

        try:
            rows = await outcomes.wait_final(ids, timeout=drain_timeout, workers=pipeline.workers, poll=5.0,
                                             progress=stalled)
            drain_note = ""
        except DrainStalled as exc:
            print(f"drain stopped: {exc}", flush=True)
            rows, drain_note = await outcomes.rows(ids), str(exc)
        drain_seconds = time.time() - drain_started
        conn = await asyncpg.connect(outcomes.dsn)
        try:
            all_ids = {r["id"] for r in await conn.fetch("SELECT id FROM blog_generations")}
        finally:
            await conn.close()
        finished = {
            i: r["finished_at"].timestamp() for i, r in rows.items() if r["status"] != "PENDING" and r["finished_at"]
        }
        statuses: dict[str, int] = {}
        for r in rows.values():
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        return {
            "clients": clients,
            "connect_seconds": connect_seconds,
            "limit": limit,
            "burst": b,
            "batches": m,
            "burst_cpu_ms": 1000 * burst_cpu / max(1, b.statuses.get(202, 0)),
            "client_cpu_ms": 1000 * client_cpu / max(1, sum(b.statuses.values())),
            "batch_cpu_ms": 1000 * batch_cpu / max(1, len(m.accepted)),
            "flood": f,
            "flood_clients": flood_clients,
            "flood_seconds": flood_seconds,
            "accepted_total": len(ids),
            "final_statuses": statuses,
            "lost": len(set(ids) - set(rows)),  # accepted, yet no row at all
            "unfinished": sum(1 for r in rows.values() if r["status"] == "PENDING"),
            "unexpected_rows": len(all_ids - set(ids)),
            "drain_seconds": drain_seconds,
            "drain_note": drain_note,
            "true_max_pending": true_max_pending(accepted, finished),
            "intake_max_figure": watch.max_figure,
            "worker_alive": all(w.alive for w in pipeline.workers),
        }


def ms(seconds: float) -> str:
    return "–" if seconds != seconds else f"{seconds * 1000:,.0f} ms"  # nan: no such answers


def report(r: dict[str, Any]) -> str:
    b: Phase = r["burst"]
    f: Phase = r["flood"]
    m: Phase = r["batches"]
    burst_rate = b.statuses.get(202, 0) / b.wall if b.wall else 0.0
    batch_rate = len(m.accepted) / m.wall if m.wall else 0.0
    flood_rate = f.statuses.get(202, 0) / f.wall if f.wall else 0.0
    answered = sum(f.statuses.values())
    rows = [
        ("Concurrent clients (burst)", f"{r['clients']:,}", "5,000"),
        ("Burst: accepted (202) / other", f"{b.statuses.get(202, 0):,} / {sum(b.statuses.values()) - b.statuses.get(202, 0):,}", "all 202"),
        ("Burst: accepted per second", f"{burst_rate:,.0f}", "≥ 2,000"),
        ("Burst: intake latency p50 / p99 / max", f"{ms(pct(b.latencies, 50))} / {ms(pct(b.latencies, 99))} / {ms(max(b.latencies, default=0))}", "p99 < 1 s"),
        ("Burst: worker CPU per accepted request", f"{r['burst_cpu_ms']:.2f} ms", ""),
        ("Burst: the benchmark clients' CPU per request", f"{r['client_cpu_ms']:.2f} ms", ""),
        ("Batches of 100 (20 clients): accepted per second", f"{batch_rate:,.0f} ({m.statuses.get(202, 0):,} batches in {m.wall:.1f} s)", "≥ 2,000"),
        ("Batches: latency p50 / p99 per batch", f"{ms(pct(m.latencies, 50))} / {ms(pct(m.latencies, 99))}", ""),
        ("Batches: worker CPU per accepted request", f"{r['batch_cpu_ms']:.2f} ms", ""),
        ("Flood: clients × seconds", f"{r['flood_clients']} × {r['flood_seconds']:.0f} s", ""),
        ("Flood: answers (202 / 429 / other)", f"{f.statuses.get(202, 0):,} / {f.statuses.get(429, 0):,} / {answered - f.statuses.get(202, 0) - f.statuses.get(429, 0):,}", ""),
        ("Flood: answers per second", f"{answered / f.wall:,.0f}" if f.wall else "-", ""),
        ("Flood: accepted per second (average / best 1 s)", f"{flood_rate:,.0f} / {accepted_rate(f.accepted):,.0f}", ""),
        ("Flood: latency p50 / p99 (202s)", f"{ms(pct(f.accepted_latencies, 50))} / {ms(pct(f.accepted_latencies, 99))}", ""),
        ("Flood: latency p50 / p99 (all)", f"{ms(pct(f.latencies, 50))} / {ms(pct(f.latencies, 99))}", ""),
        ("Queue limit / true max pending / intake's max figure", f"{r['limit']:,} / {r['true_max_pending']:,} / {r['intake_max_figure']:,}", "≈ limit"),
        ("5xx answers (all phases)", f"{b.n_5xx + m.n_5xx + f.n_5xx}", "0"),
        ("Requests without any answer", f"{b.errors + m.errors + f.errors}", "0"),
        ("Accepted in total", f"{r['accepted_total']:,}", ""),
        ("Accepted that reached a final state", f"{r['accepted_total'] - r['lost'] - r['unfinished']:,} ({json.dumps(r['final_statuses'])}) in {r['drain_seconds']:.0f} s" + (f"; {r['drain_note']}" if r['drain_note'] else ""), "all"),
        ("Accepted requests lost (no row at all)", f"{r['lost']}", "0"),
        ("Accepted requests still PENDING when the drain ended", f"{r['unfinished']}", "0"),
        ("Refused requests found in the table", f"{r['unexpected_rows']}", "0"),
    ]
    table = ["| Measure | Result | Target |", "|---|---|---|"] + [f"| {a} | {v} | {t} |" for a, v, t in rows]
    verdict = (
        b.n_5xx + m.n_5xx + f.n_5xx == 0 and r["lost"] == 0 and r["unfinished"] == 0 and pct(b.latencies, 99) < 1.0
        and max(burst_rate, batch_rate) >= 2000
        and r["unexpected_rows"] == 0 and b.errors + m.errors + f.errors == 0
    )
    return "\n".join(table) + f"\n\nAll targets met: **{'yes' if verdict else 'no'}**\n"


def burst_explanation(r: dict[str, Any]) -> str:
    """The burst's p99, explained from this run's own figures."""
    b: Phase = r["burst"]
    p99, cpu = pct(b.latencies, 99), r["burst_cpu_ms"]
    met = p99 < 1.0
    return f"""- **Why the p99 is what it is**: when {r['clients']:,} requests arrive at the same instant, the last
  answers leave only after the worker has done the work for all of them, so the p99 is about N / throughput
  ({ms(p99)} here{", under the 1 s target" if met else ", over the 1 s target"}). The worker's CPU per accepted
  request (from `/proc` over the burst: {cpu:.2f} ms) covers HTTP, validation, Avro encoding and the Kafka
  produce, and also what its own sink and first stage do with the records meanwhile. That is about
  {1000 / max(cpu, 0.001):,.0f} single requests per second on one core; the clients took
  {r['client_cpu_ms']:.2f} ms per request of the other one. What brought it down from 0.84 ms (issue 5, see
  [intake.md](intake.md#performance)): one validation pass instead of three, an Avro writer compiled for the
  schema, one Kafka batch per partition for all the submissions of a loop turn, a plain aiohttp handler instead
  of a Faust view, uvloop, and a garbage collector that no longer walks every in-flight request many times
  per burst. The margin is thin on this shared 2-core machine: repeated bursts vary by about 15%
  (`--burst-only` runs the burst alone). More headroom needs a second worker behind a load balancer (any
  worker takes any request), or clients that batch (below)."""


def write_doc(r: dict[str, Any], table: str, argv_note: str) -> None:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    why = burst_explanation(r)
    DOC.write_text(
        f"""# Intake benchmark

`make bench` (or `.venv/bin/python -m stack.bench_intake{argv_note}`), run {when} on this machine
(2 cores shared by the worker, Kafka, Postgres, the simulators and the benchmark's clients).
What it does and why is in the docstring of [`stack/bench_intake.py`](../stack/bench_intake.py); the API is
in [intake.md](intake.md).

{table}
How to read it:

- **Burst**: {r['clients']:,} clients each hold an open keep-alive connection (connecting took
  {r['connect_seconds']:.1f} s and is not counted), then all send one request at the same instant. The
  latency is what each client waited, from just before its request was written to the arrival of the last
  byte of its answer, including the time its request sat in the worker's queue behind the others: with
  everything arriving at once, the p99 is about the time the worker needs for the whole burst. Every 202
  was answered after the broker acknowledged the record. The clients are bare asyncio protocols on uvloop,
  so that their own CPU neither slows the worker nor delays the answers' timestamps.
{why}
- **Batches**: 20 clients send batches of {BATCH} back to back (the way `blogstream submit` feeds a file) until
  the queue is full. One HTTP request, one validation pass and one Kafka round trip serve 100 requests.
- **Flood**: {r['flood_clients']} clients submit single requests back to back without honouring Retry-After,
  with the queue already at its limit. It stays there: each accepted request matches one that finished, and
  everything else is refused with 429. A refusal is cheap (no parsing, no Kafka, no database) and is
  answered after a one-second pause, so the flood cannot take the CPU the worker's stages need to make
  room. That pause is most of the refusals' latency.
- **True max pending** is rebuilt afterwards from the clients' 202 times and the rows' `finished_at`:
  what really was accepted and unfinished at any moment. The worker never lets its own figure pass the
  limit; the true figure can differ only by what the sink had not yet written when another worker's
  accepts are involved (one worker here).
- **Drain**: afterwards every accepted request id was looked up until all were DONE or FAILED (or nothing
  finished for 5 minutes). "Lost" counts accepted ids without any row; "still PENDING" those the pipeline
  had not finished. "Refused requests found" counts rows whose id was never answered 202.
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 clients and a 10 s flood")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--flood-clients", type=int, default=1000)
    parser.add_argument("--flood-seconds", type=float, default=None)
    parser.add_argument("--no-doc", action="store_true", help="print only, do not write docs/bench-intake.md")
    parser.add_argument("--burst-only", action="store_true",
                        help="only the burst phase (quick iterations): figures and CPU by process; writes no doc")
    parser.add_argument("--profile", metavar="FILE",
                        help="with --burst-only: py-spy record the worker during the burst "
                             "(FILE.svg flame graph, FILE.json speedscope, FILE.txt collapsed stacks)")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # the plain loop works too, at about twice the client CPU
        pass
    clients = args.clients or (1000 if args.quick else 5000)
    if args.burst_only:
        print(burst_report(asyncio.run(burst_only(clients, args.profile))))
        return
    seconds = args.flood_seconds or (10.0 if args.quick else 30.0)
    result = asyncio.run(run(clients, min(args.flood_clients, clients), seconds, drain_timeout=1800))
    table = report(result)
    print()
    print(table)
    if not args.no_doc:
        note = " --quick" if args.quick else ""
        write_doc(result, table, note)
        print(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
