"""`make chaos`: the pipeline under every fault at once; writes docs/bench-chaos.md (+ a PNG plot).

Three workers drain a backlog of a few thousand requests on a mix of sites, on a
private broker, a private Postgres cluster and a private simulator (the shared
stack is never touched), while the providers answer 10 % of calls with a 5xx,
leave 2 % unanswered (timeouts) and cut 5 % of their answers off half-way (the
call made in full: a post is up, an image billed), Wix's Query Posts index
shows a post only 30 s after it was made (WIX_QUERY_LAG), OpenAI lists a
stored completion 5 s after it (OPENAI_STORED_LAG; looked for 15 s), and in turn:

1. normal running: the baseline throughput (completions per second);
2. the broker SIGKILLed, restarted 60 s later: log lines per second and RSS of
   each worker during the outage, then how fast throughput comes back;
3. Postgres stopped for 30 s, then the same;
4. a worker SIGKILLed every 60 s (and restarted at once), four times:
   throughput meanwhile against normal.

Then it waits for the rest and checks what every fault must leave intact:
every accepted request DONE or FAILED exactly once, no post published twice,
no provider window over its limit (the simulators' ledger), nothing PENDING.
The checks (`check_run`) and `on_broker` are shared with
tests/integration/test_faults.py.

    .venv/bin/python -m stack.chaos [--requests 2000] [--rate 5] [--workers 3]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from stack import harness
from stack.harness import ROOT, Outcomes, Pipeline, Simulators, Worker


@contextlib.contextmanager
def on_broker(bootstrap: str) -> Iterator[None]:
    """Point the harness at another broker (a PrivateKafka) for a while.

    Workers started meanwhile get it in their environment (and keep it when
    restarted); submit, read_topic and delete_topics use it. One broker at a
    time per process.
    """
    saved, harness.KAFKA = harness.KAFKA, bootstrap
    try:
        yield
    finally:
        harness.KAFKA = saved


def request_ids(requests: Iterable[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in requests]


async def results_by_request(pipeline: Pipeline, ids: set[str]) -> dict[str, set[tuple[str, str | None]]]:
    """(status, post id) of every result record of these requests (replays may repeat a record, never change it)."""
    from streams.contract import decode

    seen: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
    for message in await pipeline.read_topic("blog.results", timeout=5.0):
        result = decode("BlogResult", message.value)
        if result["request_id"] in ids:
            seen[result["request_id"]].add((result["status"], result.get("post_id")))
    return seen


def window_breaches(ledger: dict[str, Any], sites: Iterable[str]) -> list[str]:
    """Every provider window the simulators saw over its limit (ours and outside use together)."""
    out = []
    limits = {"openai": ledger["openai"]["limits"], "replicate": ledger["replicate"]["limits"],
              "wix": ledger["wix"]["limits"]}
    openai, replicate, wix = ledger["openai"], ledger["replicate"], ledger["wix"]
    if openai["max_requests_in_window"] > limits["openai"]["rpm"]:
        out.append(f"openai requests {openai['max_requests_in_window']} > {limits['openai']['rpm']}")
    if openai.get("max_tokens_in_window_enforced", 0) > limits["openai"]["tpm"]:
        out.append(f"openai tokens {openai['max_tokens_in_window_enforced']} > {limits['openai']['tpm']}")
    if replicate["max_requests_in_window"] > limits["replicate"]["create_rpm"]:
        out.append(f"replicate creates {replicate['max_requests_in_window']} > {limits['replicate']['create_rpm']}")
    for site in sites:
        used = wix["per_site"].get(site, {}).get("max_requests_in_window", 0)
        if used > limits["wix"]["site_rpm"]:
            out.append(f"wix site {site}: {used} > {limits['wix']['site_rpm']}")
    return out


async def check_run(
    pipeline: Pipeline, outcomes: Outcomes, sims: Simulators, requests: list[dict[str, Any]],
) -> dict[str, Any]:
    """Raise AssertionError naming what a run broke; returns its figures when nothing was.

    - every request has a row, DONE or FAILED (nothing PENDING, nothing missing);
    - exactly once: all of a request's result records say the same (status, post),
      and that is what its row says;
    - no duplicate post: each site has as many posts as DONE requests, none
      published again under "<slug>-1", none with a cover Wix could not import;
    - no provider window over its limit.
    """
    ids = request_ids(requests)
    rows = await outcomes.rows(ids)
    problems: list[str] = []
    statuses = Counter(r["status"] for r in rows.values())
    missing = [i for i in ids if i not in rows]
    if missing or set(statuses) - {"DONE", "FAILED"}:
        problems.append(f"not final: {dict(statuses)}, {len(missing)} without a row (e.g. {missing[:3]})")
    results = await results_by_request(pipeline, set(ids))
    twice = {i: sorted(map(str, r)) for i, r in results.items() if len(r) > 1}
    if twice:
        problems.append(f"{len(twice)} requests with different results, e.g. {list(twice.items())[:3]}")
    disagree = [i for i, r in results.items() if len(r) == 1 and i in rows
                and next(iter(r)) != (rows[i]["status"], rows[i]["post_id"])]
    if disagree:
        problems.append(f"{len(disagree)} rows do not say what their result says, e.g. {disagree[:3]}")
    no_result = [i for i in ids if i not in results]
    if no_result:
        problems.append(f"{len(no_result)} requests without a result record, e.g. {no_result[:3]}")
    ledger = sims.ledger()
    sites = sorted({r["site_id"] for r in requests})
    done_per_site = Counter(r["site_id"] for r in rows.values() if r["status"] == "DONE")
    wix = ledger["wix"]
    posts = {s: wix["posts_per_site"].get(s, 0) for s in sites}
    if posts != {s: done_per_site.get(s, 0) for s in sites}:
        problems.append(f"posts per site {posts} but DONE per site {dict(done_per_site)}")
    dupes = {s: d for s, d in (wix.get("duplicate_slugs") or {}).items() if s in sites and d}
    if dupes:
        problems.append(f"posts published twice: {dupes}")
    if wix.get("posts_with_failed_cover"):  # a cover Wix could not download: the post shows no image
        problems.append(f"{wix['posts_with_failed_cover']} posts published with a cover whose import FAILED")
    problems += window_breaches(ledger, sites)
    throttled = {p: ledger[p]["rejected_429"] for p in ("openai", "replicate", "wix") if ledger[p]["rejected_429"]}
    if throttled:  # a 429: we sent a call the provider's window had no room for
        problems.append(f"429s: {throttled}")
    failed = [r for r in rows.values() if r["status"] == "FAILED"]
    if any(not r["error"] for r in failed):
        problems.append("a FAILED request without an error saying why")
    if problems:
        raise AssertionError("; ".join(problems))
    return {"requests": len(ids), "statuses": dict(statuses), "posts": sum(posts.values()),
            "errors_5xx": {p: ledger[p]["errors_5xx"] for p in ("openai", "replicate", "wix")},
            "timeouts": {p: ledger[p].get("timeouts", 0) for p in ("openai", "replicate", "wix")},
            "answers_cut": {p: ledger[p].get("answers_cut", 0) for p in ("openai", "replicate", "wix")},
            # Completions OpenAI wrote (and billed) against articles DONE: a lost answer found among the stored
            # completions is not written again; one still being written when the client gave up can be.
            "openai_completions": ledger["openai"].get("completions", 0),
            "openai_stored_reads": ledger["openai"].get("stored_completions", {}).get("reads", 0),
            "failed_errors": Counter(r["error"].split(":", 1)[0][:80] for r in failed).most_common(5)}


_NUMBERS = re.compile(r"0x[0-9a-f]+|\d+")


_SLOTS_RELEASED = re.compile(r"limiter: worker (\S+) is gone .*? the (\d+) site slots it held .*? its (\d+) asks")


def slots_released(log_text: str) -> list[tuple[str, int, int]]:
    """What the coordinator took back from gone workers, in a worker's log: [(gone worker, slots, asks)]."""
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in _SLOTS_RELEASED.finditer(log_text)]


def repeated_tracebacks(log_text: str) -> list[tuple[int, str]]:
    """The tracebacks in a worker's log, the same ones (numbers aside) counted: [(times, last line)], most first."""
    blocks: Counter[str] = Counter()
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        block = []
        for nxt in lines[i + 1:]:
            block.append(nxt)
            if not nxt.startswith((" ", "\t")):  # the exception line ends the block
                break
        blocks[_NUMBERS.sub("N", "\n".join(block))] += 1
    return [(n, text.splitlines()[-1][:200] if text else "") for text, n in blocks.most_common()]


async def wait_until(condition, what: str, timeout: float, poll: float = 0.5) -> None:
    """Poll an async condition with a deadline."""
    deadline = time.time() + timeout
    while not await condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll)


async def wait_started(workers: list[Worker], timeout: float = 240) -> None:
    """Until every worker has started (Faust's "Worker ready" in its log): needs neither Postgres nor the limiter."""
    async def started() -> bool:
        for worker in workers:
            if not worker.alive:
                raise RuntimeError(f"{worker.name} exited:\n{worker.log_text()[-3000:]}")
        return all("Worker ready" in w.log_text() for w in workers)

    await wait_until(started, "the workers to start", timeout)


async def final_count(outcomes: Outcomes, ids: list[str]) -> int:
    rows = await outcomes.rows(ids)
    return sum(1 for r in rows.values() if r["status"] != "PENDING")


# ----------------------------------------------------------------------------- the run
WINDOW = 30.0  # every budget's window (worker and simulator alike)
PROVIDER_FAULTS = {"error_rate": 0.10, "timeout_rate": 0.02, "timeout_seconds": 15.0, "cut_rate": 0.05}
WIX_QUERY_LAG = 30.0  # Query Posts misses posts made this recently: a lost create's post must still be found
OPENAI_STORED_LAG = 5.0  # OpenAI lists a stored completion this long after it: a lost article must still be found
# How long the workers look for a lost article before writing it again (default 30 s). Each lost answer holds its
# site's in-flight slot that long, and 7 % of answers are lost here: with 30 s the big site's slot-bound tail ran
# past the run's time bound (a third slower).
LOST_ANSWER_WAIT = 15.0
CLIENT_TIMEOUT = 8.0  # the workers' provider timeouts: a call left unanswered ends as a timeout after this
BROKER_OUTAGE, POSTGRES_OUTAGE, KILL_EVERY, KILLS, SETTLE = 60.0, 30.0, 60.0, 4, 60.0
BIN = 10.0  # seconds per throughput bin
STALL_SECONDS = 180.0  # no request final for this long after the faults: the run is stuck, report it


@dataclass
class Fault:
    name: str
    start: float
    end: float  # when it cleared (the broker / Postgres answering again; for a kill, the restart)


@dataclass
class Sample:
    at: float
    rss_kb: dict[str, int]
    log_lines: dict[str, int]
    openai: dict[str, Any] | None = None  # the limiter's figures for openai_requests (used_in_window, waiting...)


@dataclass
class Chaos:
    requests: int
    rate: float
    workers: int
    static_membership: bool = True
    phases: tuple[str, ...] = ("broker", "postgres", "kills")
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    submitted_at: float = 0.0

    @property
    def per_window(self) -> int:
        return int(self.rate * WINDOW)

    def sim_config(self) -> dict[str, Any]:
        return {
            "window_seconds": WINDOW, "latency_scale": 1.0, "seed": 20261204,
            "openai": {"rpm": self.per_window, "tpm": 5_000_000, "stored_lag_seconds": OPENAI_STORED_LAG,
                       **PROVIDER_FAULTS},
            "replicate": {"create_rpm": 2 * self.per_window, **PROVIDER_FAULTS},
            "wix": {"site_rpm": 200, "query_lag_seconds": WIX_QUERY_LAG, **PROVIDER_FAULTS},
        }

    def worker_settings(self, database_url: str) -> dict[str, Any]:
        return {
            "database_url": database_url, "budget_window_seconds": WINDOW, "openai_rpm": self.per_window,
            "openai_tpm": 5_000_000, "replicate_rpm": 2 * self.per_window, "wix_site_rpm": 200,
            "openai_timeout": CLIENT_TIMEOUT, "replicate_timeout": CLIENT_TIMEOUT, "wix_timeout": CLIENT_TIMEOUT,
            "kafka_static_membership": str(self.static_membership).lower(),
            "openai_lost_answer_wait_seconds": LOST_ANSWER_WAIT,
        }


def site_mix(prefix: str, requests: int, sites: int = 30, seed: int = 7) -> list[str]:
    """One site id per request: a few big sites and a long tail (sizes ~ 1/rank), shuffled."""
    weights = [1.0 / (rank + 1) for rank in range(sites)]
    rng = random.Random(seed)
    return rng.choices([f"{prefix}-site{rank:02d}" for rank in range(sites)], weights=weights, k=requests)


class Sampler:
    """Every second: each worker's RSS and the lines in its log so far."""

    def __init__(self, chaos: Chaos, workers: list[Worker]) -> None:
        self.chaos, self.workers = chaos, workers
        self._lines: dict[str, int] = defaultdict(int)
        self._offsets: dict[str, int] = defaultdict(int)

    def _count_lines(self, worker: Worker) -> int:
        try:
            with open(worker.log_path, "rb") as fh:
                fh.seek(self._offsets[worker.name])
                chunk = fh.read()
        except OSError:
            return self._lines[worker.name]
        self._offsets[worker.name] += len(chunk)
        self._lines[worker.name] += chunk.count(b"\n")
        return self._lines[worker.name]

    async def run(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=0.5) as http:  # one client (and its connections) for the whole run
            while True:
                await self._sample(http)
                await asyncio.sleep(1.0)

    async def _sample(self, http: Any) -> None:
        rss = {}
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    status = Path(f"/proc/{worker.proc.pid}/status").read_text()
                    rss[worker.name] = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        lines = {w.name: self._count_lines(w) for w in self.workers}
        self.chaos.samples.append(Sample(time.time(), rss, lines, await self._limiter(http)))

    async def _limiter(self, http: Any) -> dict[str, Any] | None:
        """The OpenAI request budget as the limiter sees it now (any live worker serves the snapshot)."""
        import httpx

        for worker in self.workers:
            if not worker.alive:
                continue
            token = worker.env.get("BLOGSTREAM_ADMIN_TOKEN") or worker.env.get("BLOGSTREAM_INTAKE_TOKEN")
            try:
                answer = await http.get(worker.url("/api/limiter"),
                                        headers={"Authorization": f"Bearer {token}"} if token else {})
                figures = answer.json().get("openai_requests") if answer.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            if figures:
                return figures
        return None


async def completions(outcomes: Outcomes, ids: list[str]) -> list[float]:
    """Finish times (unix seconds) of every request that is DONE or FAILED."""
    rows = await outcomes.rows(ids)
    return sorted(r["finished_at"].timestamp() for r in rows.values()
                  if r["status"] in ("DONE", "FAILED") and r["finished_at"] is not None)


def rate(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / max(end - start, 1e-9)


async def wait_while_moving(outcomes: Outcomes, ids: list[str], stall: float, limit: float) -> bool:
    """Until every request is final (returns False), or none became final for `stall` seconds, or `limit`
    seconds have passed (True: the run did not finish)."""
    last, moved, deadline = -1, time.time(), time.time() + limit
    while True:
        done = await final_count(outcomes, ids)
        if done == len(ids):
            return False
        if done != last:
            last, moved = done, time.time()
        elif time.time() - moved > stall:
            return True
        if time.time() > deadline:
            return True
        await asyncio.sleep(2.0)


async def stuck_diagnosis(outcomes: Outcomes, ids: list[str], app_id: str,
                          names: dict[int, str] | None = None) -> dict[str, Any]:
    """Where unfinished requests are: pending per site, effect claims whose lease ran out with nobody
    taking them over, and the site slots the limiter counts as taken (its last published figures).
    `names`: the worker names by process id, so a claim's holder (host-pid-suffix) says which log to read."""
    import asyncpg

    from store.limiter_snapshot import read_snapshot

    conn = await asyncpg.connect(outcomes.dsn)
    try:
        pending_by_site = {r["site_id"]: r["n"] for r in await conn.fetch(
            "SELECT site_id, count(*) AS n FROM blog_generations WHERE id = ANY($1::text[]) AND status = 'PENDING' "
            "GROUP BY 1 ORDER BY 2 DESC", ids)}
        claims = [dict(r) for r in await conn.fetch(
            "SELECT site_id, stage, split_part(claimed_by, ':', 1) AS worker, claimed_until < now() AS lapsed, "
            "count(*) AS n FROM stage_outputs WHERE request_id = ANY($1::text[]) AND status = 'claimed' "
            "GROUP BY 1, 2, 3, 4", ids)]
        snapshot = await read_snapshot(conn, app_id)
    finally:
        await conn.close()
    for claim in claims:
        claim["worker"] = holder_named(claim["worker"], names or {})
    slots = (snapshot.figures.get("slots") or {}) if snapshot is not None else None
    return {"pending_by_site": pending_by_site, "open_claims": claims, "slots_taken": slots}


def holder_named(holder: str, names: dict[int, str]) -> str:
    """A claim's holder (the worker's limiter instance, host-pid-suffix) with the worker's name when its pid is
    one of `names`: "vm-10129-f99fb2 (chaos-w3)"."""
    parts = holder.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in names:
        return f"{holder} ({names[int(parts[1])]})"
    return holder


async def pending(outcomes: Outcomes, ids: list[str]) -> int:
    return len(ids) - await final_count(outcomes, ids)


async def outage(chaos: Chaos, name: str, stop: Any, start: Any, seconds: float) -> None:
    """Stop a server, start it again `seconds` later, note the fault (until it answers again), let things settle."""
    began = time.time()
    await asyncio.to_thread(stop)
    print(f"[chaos] {name}")
    await asyncio.sleep(seconds)
    await asyncio.to_thread(start)
    chaos.faults.append(Fault(name, began, time.time()))
    print(f"[chaos] {name}: back after {time.time() - began:.0f} s")
    await asyncio.sleep(SETTLE)


async def run(chaos: Chaos) -> dict[str, Any]:
    from stack.stack import PrivateKafka, PrivatePostgres

    kafka = await asyncio.to_thread(PrivateKafka().start)
    pg = await asyncio.to_thread(PrivatePostgres().start)
    sims = await asyncio.to_thread(Simulators.start, chaos.sim_config())
    outcomes = Outcomes(pg.dsn())
    sampler_task = None
    try:
        with on_broker(kafka.bootstrap):
            pipeline = Pipeline(name=f"chaos{int(time.time()) % 100000}", sim_url=sims.url,
                                settings=chaos.worker_settings(pg.dsn()))
            try:
                workers = [pipeline.start_worker() for _ in range(chaos.workers)]
                await wait_started(workers)
                sampler_task = asyncio.ensure_future(Sampler(chaos, workers).run())
                requests = [pipeline.request(site, n) for n, site in enumerate(site_mix(pipeline.name, chaos.requests))]
                ids = request_ids(requests)
                await outcomes.add_sites(sorted({r["site_id"] for r in requests}))
                chaos.submitted_at = time.time()
                await pipeline.submit(requests)
                print(f"[chaos] {len(requests)} requests submitted on {len({r['site_id'] for r in requests})} sites")

                async def some_done() -> bool:
                    return await final_count(outcomes, ids) > 0

                await wait_until(some_done, "the first completion", timeout=300)
                first = time.time()
                await asyncio.sleep(20 + 60)  # warm-up, then the baseline minute
                baseline = (first + 20, first + 80)
                print(f"[chaos] baseline measured; {await pending(outcomes, ids)} pending")
                if "broker" in chaos.phases:  # SIGKILLed: no controlled shutdown
                    await outage(chaos, "broker down", kafka.kill, kafka.start, BROKER_OUTAGE)
                if "postgres" in chaos.phases:
                    await outage(chaos, "postgres down", pg.stop, pg.start, POSTGRES_OUTAGE)
                if "kills" in chaos.phases:
                    for i in range(KILLS):
                        victim = workers[i % len(workers)]
                        start = time.time()
                        victim.kill()
                        victim.start()  # the same name, port and identity
                        chaos.faults.append(Fault(f"{victim.name} SIGKILLed", start, time.time()))
                        print(f"[chaos] {victim.name} SIGKILLed and restarted; {await pending(outcomes, ids)} pending")
                        await asyncio.sleep(KILL_EVERY)
                left = await pending(outcomes, ids)
                print(f"[chaos] faults over; {left} pending, waiting for them")
                backlog_lasted = left > 0
                stalled = await wait_while_moving(outcomes, ids, STALL_SECONDS, 120 + 2 * left / chaos.rate)
                rows = await outcomes.rows(ids)
                print(f"[chaos] final: {dict(Counter(r['status'] for r in rows.values()))}")
                try:
                    checks = await check_run(pipeline, outcomes, sims, requests)
                except AssertionError as broken:
                    checks = {"problems": str(broken), "stalled": stalled,
                              "statuses": dict(Counter(r["status"] for r in rows.values())),
                              "diagnosis": await stuck_diagnosis(
                                  outcomes, ids, pipeline.name,
                                  {w.proc.pid: w.name for w in workers if w.proc is not None})}
                times = await completions(outcomes, ids)
                logs = {w.name: w.log_text() for w in workers}
            finally:
                if sampler_task is not None:
                    sampler_task.cancel()
                pipeline.stop(delete_topics=False)  # the broker goes with its data
    finally:
        sims.stop()
        await asyncio.to_thread(kafka.destroy)
        await asyncio.to_thread(pg.destroy)
    return figures(chaos, times, baseline, checks, logs, backlog_lasted)


def figures(chaos: Chaos, times: list[float], baseline: tuple[float, float], checks: dict[str, Any],
            logs: dict[str, str], backlog_lasted: bool) -> dict[str, Any]:
    normal = rate(times, *baseline)
    out: dict[str, Any] = {"normal_per_s": normal, "baseline": baseline, "checks": checks,
                           "backlog_lasted": backlog_lasted, "singles": [], "settings": {
                               "requests": chaos.requests, "workers": chaos.workers, "budget_per_s": chaos.rate,
                               "window_s": WINDOW, "static_membership": chaos.static_membership,
                               "provider_faults": PROVIDER_FAULTS, "client_timeout_s": CLIENT_TIMEOUT}}
    for fault in chaos.faults:
        if "SIGKILL" in fault.name:
            continue
        back = next((t for t in _bins(fault.end, fault.end + 120) if rate(times, t, t + BIN) >= 0.9 * normal), None)
        out["singles"].append({
            "fault": fault.name, "seconds": fault.end - fault.start,
            "during": rate(times, fault.start, fault.end) / normal,
            "first_30s": rate(times, fault.end, fault.end + 30) / normal,
            "next_30s": rate(times, fault.end + 30, fault.end + 60) / normal,
            "back_to_90pct_after_s": None if back is None else back + BIN - fault.end,
            "limiter_after": limiter_after(chaos, fault),
        })
        if fault.name == "broker down":
            out["broker_outage"] = outage_figures(chaos, fault)
    kills = [f for f in chaos.faults if "SIGKILL" in f.name]
    if kills:
        start, end = kills[0].start, kills[-1].start + KILL_EVERY
        out["kills"] = {"count": len(kills), "from": start, "to": end, "ratio": rate(times, start, end) / normal}
    out["tracebacks"] = {name: repeated_tracebacks(text)[:3] for name, text in logs.items()}
    out["slots_released"] = [pair for text in logs.values() for pair in slots_released(text)]
    out["log_bytes"] = {name: len(text.encode()) for name, text in logs.items()}
    first = min(times) if times else chaos.submitted_at
    out["timeline"] = {"t0": first, "bins": [(t - first, rate(times, t, t + BIN) * BIN) for t in _bins(first, max(times))]}
    out["faults"] = [(f.name, f.start - first, f.end - first) for f in chaos.faults]
    return out


def _bins(start: float, end: float) -> Iterator[float]:
    t = start
    while t < end:
        yield t
        t += BIN


def limiter_after(chaos: Chaos, fault: Fault, every: float = 5.0, span: float = 60.0) -> list[tuple[float, Any, Any, dict]]:
    """(seconds after the fault cleared, OpenAI requests granted in the window, asks waiting) every 5 s:
    how fast the binding budget is in use again."""
    out = []
    t = fault.end - every
    while t <= fault.end + span:
        near = [s for s in chaos.samples if s.openai and abs(s.at - t) <= 1.0]
        if near:
            figures = min(near, key=lambda s: abs(s.at - t)).openai
            out.append((t - fault.end, figures.get("used_in_window"), figures.get("waiting"),
                        {k: figures.get(k) for k in ("effective_limit", "factor", "external", "used_in_span")}))
        t += every
    return out


def outage_figures(chaos: Chaos, fault: Fault) -> dict[str, Any]:
    during = [s for s in chaos.samples if fault.start <= s.at <= fault.end]
    if len(during) < 2:
        return {}
    per_worker = {}
    for name in during[0].log_lines:
        lines = during[-1].log_lines[name] - during[0].log_lines[name]
        rss = [s.rss_kb[name] for s in during if name in s.rss_kb]
        per_worker[name] = {
            "log_lines_per_s": lines / (during[-1].at - during[0].at),
            "rss_mb_start": rss[0] / 1024 if rss else None, "rss_mb_end": rss[-1] / 1024 if rss else None,
            "rss_mb_max": max(rss) / 1024 if rss else None,
        }
    return per_worker


# ----------------------------------------------------------------------------- the report
def plot(result: dict[str, Any], path: Path) -> bool:
    """Completions per 10 s over time, the faults marked (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bins = result["timeline"]["bins"]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.bar([t for t, _ in bins], [n for _, n in bins], width=BIN * 0.9, align="edge", color="#4a7ab5",
           label="completions per 10 s")
    ax.axhline(result["normal_per_s"] * BIN, color="#333", linestyle="--", linewidth=1, label="normal")
    ax.axhline(0.9 * result["normal_per_s"] * BIN, color="#999", linestyle=":", linewidth=1, label="90 % of normal")
    colors = {"broker down": "#d9534f", "postgres down": "#f0ad4e"}
    for name, start, end in result["faults"]:
        if "SIGKILL" in name:
            ax.axvline(start, color="#7b3f9e", linewidth=1.2)
            ax.text(start, ax.get_ylim()[1] * 0.97, " kill", color="#7b3f9e", fontsize=8, va="top")
        else:
            ax.axvspan(start, end, color=colors.get(name, "#ccc"), alpha=0.3, label=name)
    ax.set_xlabel("seconds since the first completion")
    ax.set_ylabel("requests finished per 10 s")
    ax.set_title("blogstream under faults: 3 workers, providers 10 % 5xx + 2 % timeouts + 5 % cut")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def report(result: dict[str, Any], png: str | None, busy: str) -> str:
    s, checks = result["settings"], result["checks"]
    lines = [
        "# Chaos benchmark (`make chaos`)",
        "",
        f"{s['requests']} requests on 30 sites (sizes ~ 1/rank), {s['workers']} workers, a private broker, "
        f"Postgres and simulator. Budget: {s['budget_per_s']:g} OpenAI requests/s (W = {s['window_s']:g} s), "
        "the binding limit. Providers answer 10 % of calls with a 5xx, leave 2 % unanswered "
        f"(the workers time out after {s['client_timeout_s']:g} s) and cut 5 % of their answers off "
        f"half-way, after the call was made. Wix's Query Posts index shows a post {WIX_QUERY_LAG:g} s after it "
        f"was made, OpenAI lists a stored completion {OPENAI_STORED_LAG:g} s after it was written (a lost article is looked "
        f"for {LOST_ANSWER_WAIT:g} s before it is written again). Static membership: "
        f"{'on' if s['static_membership'] else 'off'}. {busy}",
        "",
    ]
    if "problems" in checks:
        lines += ["## The checks FAILED", "", f"Outcomes: {checks['statuses']}"
                  + (" (not all final within twice the time the rest should take: stuck)" if checks.get("stalled") else ""),
                  "", f"- {checks['problems']}", f"- where: {checks.get('diagnosis')}"]
    else:
        lines += [
            "## What every fault left intact",
            "",
            f"- every request final: {checks['statuses']} (none PENDING), each with one result",
            f"- posts: {checks['posts']}, none published twice; no provider window over its limit, no 429",
            f"- provider faults met: 5xx {checks['errors_5xx']}, timeouts {checks['timeouts']}, "
            f"answers cut {checks.get('answers_cut', {})}",
            f"- articles paid: {checks.get('openai_completions', '?')} OpenAI completions written for "
            f"{checks['statuses'].get('DONE', 0)} DONE ({checks.get('openai_stored_reads', '?')} look-ups among "
            "the stored completions after a lost answer)",
        ]
        if checks["failed_errors"]:
            lines.append(f"- FAILED requests by error: {checks['failed_errors']}")
    lines += [
        "",
        "## Throughput",
        "",
        f"Normal: **{result['normal_per_s']:.2f} requests/s** (the minute after a 20 s warm-up).",
        "",
        "| Fault | Lasted | During | First 30 s after | Next 30 s | Back to 90 % after |",
        "|---|---|---|---|---|---|",
    ]
    for single in result["singles"]:
        back = single["back_to_90pct_after_s"]
        lines.append(f"| {single['fault']} | {single['seconds']:.0f} s | {pct(single['during'])} | "
                     f"{pct(single['first_30s'])} | {pct(single['next_30s'])} | "
                     f"{'not within 120 s' if back is None else f'{back:.0f} s'} |")
    for single in result["singles"]:
        if single.get("limiter_after"):
            lines += ["", f"The binding budget after *{single['fault']}* cleared (OpenAI requests granted in the "
                          f"last {WINDOW:.0f} s of {result['settings']['budget_per_s'] * WINDOW:.0f}; asks waiting):", "",
                      "| s after | " + " | ".join(f"{t:+.0f}" for t, *_ in single["limiter_after"]) + " |",
                      "|---" * (len(single["limiter_after"]) + 1) + "|",
                      "| granted | " + " | ".join(f"{u:.0f}" if u is not None else "-" for _, u, *_ in single["limiter_after"]) + " |",
                      "| waiting | " + " | ".join(str(w) if w is not None else "-" for _, _, w, _ in single["limiter_after"]) + " |"]
    if "kills" in result:
        k = result["kills"]
        lines += ["", f"A worker SIGKILLed every {KILL_EVERY:.0f} s and restarted at once ({k['count']} kills, "
                      f"{k['to'] - k['from']:.0f} s): **{pct(k['ratio'])} of normal**."]
    released = result.get("slots_released") or []
    if released:
        lines += ["", f"The limiter took back what killed workers held {len(released)} times, each when the "
                      "restarted process was first heard or 30 s after the worker went silent "
                      f"(streams/limiter/workers.py): {sum(r[1] for r in released)} site slots "
                      f"(most at once {max(r[1] for r in released)}) and {sum(r[2] for r in released)} asks still "
                      f"waiting (most at once {max(r[2] for r in released)}). Before, the slots stayed taken for an "
                      "hour (the big site ran on the slots left) and the asks were granted to nobody."]
    if not result["backlog_lasted"]:
        lines += ["", "**The backlog ran out before the last fault: the figures after it are not throughput.**"]
    if result.get("broker_outage"):
        lines += ["", f"## During the {BROKER_OUTAGE:.0f} s broker outage", "",
                  "| Worker | Log lines/s | RSS at start | max | at end |", "|---|---|---|---|---|"]
        for name, w in result["broker_outage"].items():
            lines.append(f"| {name.rsplit('-', 1)[-1]} | {w['log_lines_per_s']:.2f} | {w['rss_mb_start']:.0f} MB | "
                         f"{w['rss_mb_max']:.0f} MB | {w['rss_mb_end']:.0f} MB |")
    lines += ["", "Log size per worker over the whole run: "
              + ", ".join(f"{n.rsplit('-', 1)[-1]} {b / 1e6:.1f} MB" for n, b in result["log_bytes"].items())
              + "; the most repeated tracebacks: "
              + ("; ".join(f"{n.rsplit('-', 1)[-1]}: {t[0][0]} x {t[0][1]}" for n, t in result["tracebacks"].items() if t)
                 or "none") + "."]
    if png:
        lines += ["", f"![completions per 10 s, faults marked]({png})"]
    lines += ["", "How to read it: throughput is requests that became DONE or FAILED per second, by their finish "
              "time in Postgres. *During* is the rate while the fault lasted (the broker: from the SIGKILL until "
              "it answered metadata again; Postgres: from the stop until it accepted connections again), *first* "
              "and *next 30 s* the rates right after it cleared, *back to 90 %* the end of the first 10 s bin "
              "after it cleared at 90 % of normal or more. The budget is the binding limit, so throughput cannot "
              "catch up above normal after a fault: what was lost stays lost. Log lines per second count every "
              "line a worker wrote during the broker outage (the aiokafka reconnect errors are the bulk: a few per "
              "30 s pass, then a count); RSS is sampled every second."]
    lines += ["", "Timeline (seconds since the first completion):", ""]
    lines += [f"- {start:6.0f} to {end:6.0f}: {name}" for name, start, end in result["faults"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=5.0, help="the OpenAI budget, requests per second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--phases", default="broker,postgres,kills")
    parser.add_argument("--no-static-membership", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench-chaos.md"))
    args = parser.parse_args()
    import os

    load = os.getloadavg()[0]
    busy = f"Load average at the start: {load:.1f} on {os.cpu_count()} cores" + (" (busy)." if load > 1.5 else ".")
    chaos = Chaos(args.requests, args.rate, args.workers, not args.no_static_membership,
                  tuple(p for p in args.phases.split(",") if p))
    started = time.time()
    result = asyncio.run(run(chaos))
    out = Path(args.out)
    png = out.with_suffix(".png")
    text = report(result, png.name if plot(result, png) else None, busy)
    out.write_text(text)
    figures_file = harness.STACK_DIR / "logs" / f"{out.stem}.json"  # every figure, for a closer look
    figures_file.parent.mkdir(parents=True, exist_ok=True)
    figures_file.write_text(json.dumps(result, indent=1, default=str))
    print(text)
    print(f"written to {out} ({time.time() - started:.0f} s)")
    if "problems" in result["checks"]:
        raise SystemExit(f"chaos: the checks failed: {result['checks']['problems']}")


if __name__ == "__main__":
    main()
