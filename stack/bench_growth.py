"""Growth curves (issue 13, item 3): permits and memory as active sites and queued requests grow.

Three measurements, each on a fresh private simulator, database, topics and worker:

- **Active sites** (10 / 1,000 / 10,000): one worker (so it runs the coordinator)
  with room for CONCURRENCY generate events in flight, a backlog on every site,
  and an OpenAI request limit (OPENAI_RPM per 10 s window, simulator at zero
  latency) that keeps thousands of asks waiting at the coordinator at once. Once
  the waiting line has built up, MEASURE seconds of steady state: permit latency
  p50/p99 (the workers' blogstream_permit_overhead_seconds, only the permits of
  that stretch: the difference of two scrapes), the worker's process CPU and the
  coordinator's own part of it (py-spy samples whose stack is in the
  coordinator's code), both per 1,000 OpenAI grants (one per blog).
- **Queued requests** (1,000 / 10,000 / 100,000): one worker whose OpenAI budget
  is 1 request a minute, so nothing leaves; N requests over QUEUED_SITES sites
  are read into its generate stage (the first stage_concurrency of them started
  and waiting at the coordinator for a permit, the rest in the stage's per-site
  lines; every one recorded PENDING). Its RSS once it holds all N, its peak RSS,
  and the bytes per queued request: the slope of RSS over N.
- **The coordinator's book alone** (no Kafka): CPU per 1,000 grants of
  streams/limiter/book.py driven as the coordinator drives it, for sites and
  waiting asks apart, to tell which one the cost follows.

    .venv/bin/python -m stack.bench_growth            # writes docs/bench-growth.md and its plots
    .venv/bin/python -m stack.bench_growth --quick    # small levels, a smoke run (prints the table only)

Text below KEEP_MARK in the doc (written by hand) is kept.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stack.bench_capacity import collapsed_stacks, cpu_seconds, peak_rss_mb, profile_summary, write_doc
from stack.bench_limiter import (DOCS, LimiterRig, _commit, _ms, counter_total, parse_histogram, quantile,
                                 scrape_metrics)
from stack.bench_tier import save_png
from stack.harness import ROOT
from streams.limiter.book import Ask, BudgetBook

WINDOW = 10.0
OPENAI_RPM = 150  # per 10 s window: 15 grants a second, far below what the pipeline does at zero latency
HUGE = 10_000_000
QUEUED_RPM = 1  # per 60 s window: nothing leaves while requests pile up
PROFILE_RATE = 100  # py-spy samples per second
GOAL_P99_RATIO = 1.5
OPENAI = "openai_requests"
# A py-spy sample is the coordinator's when a frame of its stack is in one of these files.
# (published.py: its snapshot writer, once a second; the reader there serves stats pages, not asked here.)
COORDINATOR_CODE = ("streams/limiter/coordinator.py", "streams/limiter/book.py", "streams/limiter/rates.py",
                    "streams/limiter/tokens.py", "streams/limiter/line.py", "streams/limiter/leases.py",
                    "streams/limiter/reserve.py", "streams/limiter/workers.py", "streams/limiter/published.py")
# The stage runner choosing the next event to start (worker side, per started event).
DISPATCH_CODE = (("_next", "streams/pipeline/runner.py"), ("_park_paused", "streams/pipeline/runner.py"))


@dataclass(frozen=True)
class Plan:
    site_levels: tuple[int, ...]
    concurrency: int  # generate events in flight in the worker (each waits for a permit)
    requests: int  # backlog of each active-sites run, spread evenly over its sites
    measure_s: float
    ramp_timeout_s: float
    queued_levels: tuple[int, ...]
    queued_sites: int
    book_cases: tuple[tuple[int, int], ...]  # (sites, waiting asks)
    book_grants: int
    profiles: Path | None = None  # keep each active-sites level's py-spy stacks there (--profiles)


# 180 s: about 2,600 grants per level, so each p99 is the 26th slowest. With 60 s (860 grants, the 9th
# slowest) the largest-over-smallest p99 ranged from 1.8x to 9x between runs of the same code
# (sessions 14 and 16, docs/bench-growth.md).
FULL = Plan(site_levels=(10, 1_000, 10_000), concurrency=10_000, requests=20_000, measure_s=180.0,
            ramp_timeout_s=180.0, queued_levels=(1_000, 10_000, 100_000), queued_sites=1_000,
            book_cases=((10, 200), (1_000, 1_000), (10_000, 10_000), (10, 10_000), (1_000, 10_000)), book_grants=600)
QUICK = Plan(site_levels=(10, 200), concurrency=400, requests=2_000, measure_s=15.0, ramp_timeout_s=60.0,
             queued_levels=(1_000, 4_000), queued_sites=100, book_cases=((10, 200), (200, 400)), book_grants=300)


# --------------------------------------------------------------------------- pure helpers


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None for fewer than two distinct xs)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def histogram_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """The cumulative buckets of what a histogram counted between two scrapes."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def labelled_value(text: str, name: str, label: str, value: str) -> float:
    """The sum of a metric's samples that carry label=value (0 when there are none)."""
    total = 0.0
    for m in re.finditer(rf'^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+-]+)$', text, re.MULTILINE):
        if f'{label}="{value}"' in m.group(1):
            total += float(m.group(2))
    return total


def profile_shares(collapsed: str, groups: dict[str, tuple]) -> tuple[int, dict[str, int]]:
    """Samples in all, and per group, of py-spy's collapsed stacks ("frame;frame;... count" lines).

    A group is a tuple of path substrings, or of (function, path substring) pairs;
    a sample belongs to it when any frame of its stack matches one.
    """
    total, counts = 0, dict.fromkeys(groups, 0)
    for frames, n in collapsed_stacks(collapsed):
        total += n
        for name, patterns in groups.items():
            if any(_matches(frame, pattern) for frame in frames for pattern in patterns):
                counts[name] += n
    return total, counts


def entry_breakdown(collapsed: str, patterns: tuple, top: int = 6) -> list[tuple[str, int]]:
    """The samples of a group (see profile_shares) by the group's outermost frame: where they entered it.

    Tells which of the group's entry points a cost grows in (the coordinator's pass, its snapshot, ...).
    """
    entries: dict[str, int] = {}
    for frames, n in collapsed_stacks(collapsed):
        entry = next((frame for frame in frames if any(_matches(frame, p) for p in patterns)), None)
        if entry is not None:
            name = entry.split(" (", 1)[0]
            entries[name] = entries.get(name, 0) + n
    return sorted(entries.items(), key=lambda item: (-item[1], item[0]))[:top]


def _matches(frame: str, pattern: Any) -> bool:
    if isinstance(pattern, str):
        return pattern in frame
    function, path = pattern  # py-spy names a method Class.method
    name = frame.split(" (", 1)[0]
    return (name == function or name.endswith(f".{function}")) and path in frame


def per_thousand(amount: float | None, grants: float) -> float | None:
    return None if amount is None or grants <= 0 else 1000.0 * amount / grants


def ratio(values: list[float | None]) -> float | None:
    """Largest over smallest of the values measured (None when fewer than two, or a zero)."""
    known = [v for v in values if v is not None]
    if len(known) < 2 or min(known) <= 0:
        return None
    return max(known) / min(known)


def book_cost(sites: int, waiting: int, grants: int, rate: float = 50.0) -> dict[str, Any]:
    """CPU seconds of the coordinator's book per 1,000 grants, with `waiting` asks over `sites` sites.

    Driven as the coordinator drives it on a saturated paced budget: a pass
    whenever the next pacing slot comes within the lookahead (one grant each),
    expiry and pruning once a second; every granted site asks again at once, so
    the line and the number of sites waiting stay as they are.
    """
    specs = {OPENAI: {"limit": int(rate * WINDOW), "window": WINDOW, "paced": True},
             "openai_tokens": {"limit": HUGE * 100, "window": WINDOW}}
    book = BudgetBook(specs, grace=0.3, slot_default=HUGE, lookahead=1.0)
    book.instance = "bench-"
    per_site = max(1, waiting // sites)
    count = 0
    now = 1_000.0

    def ask(site: str) -> None:
        nonlocal count
        count += 1
        book.add_ask(Ask(f"a{count}", site, f"r{count}", {OPENAI: 1.0, "openai_tokens": 500.0}, HUGE, 1.0, now, 0))

    for s in range(sites):
        for _ in range(per_site):
            ask(f"site-{s}")

    def serve(now: float) -> int:
        made = book.grant_ready(now)
        for grant in made:  # the request is done at once; its site asks again
            book.release_slot(grant.ask.site_id, grant.ask.request_id)
            ask(grant.ask.site_id)
        return len(made)

    serve(now)  # the first pass grants the lookahead's worth at once: not counted
    granted, started = 0, time.process_time()
    while granted < grants:
        now += 1.0 / rate
        granted += serve(now)
        if int(now) != int(now - 1.0 / rate):
            book.expire(now)
            book.prune(now)
    cpu = time.process_time() - started
    return {"sites": sites, "waiting": len(book.waiting), "grants": granted, "cpu_per_1000": 1000.0 * cpu / granted}


# --------------------------------------------------------------------------- runs


def _rig(plan: Plan, *, rpm: int, window: float, concurrency: int, read_ahead: int, queue_limit: int) -> LimiterRig:
    return LimiterRig(
        sim_config={
            "window_seconds": window, "latency_scale": 0.0,
            "openai": {"rpm": rpm, "tpm": HUGE * 100, "error_rate": 0.0, "external_rpm": 0},
            "replicate": {"create_rpm": HUGE, "other_rpm": HUGE, "error_rate": 0.0, "external_rpm": 0},
            "wix": {"site_rpm": HUGE, "error_rate": 0.0, "external_rpm": 0},
        },
        settings={
            "budget_window_seconds": window, "openai_rpm": rpm, "openai_tpm": HUGE * 100, "replicate_rpm": HUGE,
            "replicate_other_rpm": HUGE, "wix_site_rpm": HUGE, "heartbeat_seconds": 10,
            "stage_concurrency": concurrency, "read_ahead": read_ahead,
            # The intake's gate (POST /api/blogs answers 429 above it); raised so it would take the run's backlog.
            "queue_size_limit": queue_limit, "site_max_queued": queue_limit,
        },
    )


async def _limiter_figures(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        r = await http.get(url)
        return r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def _waiting(figures: dict[str, Any]) -> int | None:
    return (figures.get("book") or {}).get("waiting")


async def run_active(plan: Plan, sites: int, log: Any = print) -> dict[str, Any]:
    """One active-sites level: steady state with every site's asks waiting, measured for plan.measure_s."""
    rig = await _rig(plan, rpm=OPENAI_RPM, window=WINDOW, concurrency=plan.concurrency,
                     read_ahead=plan.requests + plan.concurrency, queue_limit=2 * plan.requests).start()
    profile = Path("/tmp") / f"blogstream-growth-{os.getpid()}-{sites}.collapsed"
    try:
        assert rig.pipeline is not None and rig.outcomes is not None
        p = rig.pipeline
        names = [f"g-{i:05d}" for i in range(sites)]
        # Every level holds the stage's room in asks waiting, so the levels differ in sites only: a site may
        # run its share of that room at once (20, the default cap, would keep 10 sites at 200 asks waiting).
        per_site = max(20, -(-plan.concurrency // sites))
        await rig.outcomes.add_sites(names, max_in_flight=per_site, max_queued=2 * plan.requests)
        worker = rig.start_worker()
        await p.wait_for_topics()
        await p.wait_ready()
        await asyncio.sleep(2.0)
        await p.submit([p.request(names[i % sites], i) for i in range(plan.requests)])
        submitted = time.time()
        expected = min(plan.concurrency, per_site * sites, plan.requests)  # events in flight: the stage's room
        async with httpx.AsyncClient(timeout=30) as http:
            limiter_url = worker.url("/api/limiter")
            history: list[int] = []
            while time.time() - submitted < plan.ramp_timeout_s:
                await asyncio.sleep(3.0)
                history.append(_waiting(await _limiter_figures(http, limiter_url)) or 0)
                grown = len(history) >= 3 and history[-1] <= 1.02 * history[-3]
                if history[-1] >= 0.9 * expected or (grown and history[-1] >= 0.5 * expected):
                    break
            ramp_s = time.time() - submitted
            log(f"  [growth] {sites} sites: {history[-1] if history else 0} asks waiting after {ramp_s:.0f} s")
            before = (await scrape_metrics([worker], timeout=60) or [""])[0]
            cpu0, t0 = cpu_seconds(worker.proc.pid), time.time()
            spy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(worker.proc.pid), "--format",
                                    "raw", "--rate", str(PROFILE_RATE), "--nonblocking", "--duration",
                                    str(int(plan.measure_s)), "-o", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            waiting_seen: list[int] = []
            while time.time() - t0 < plan.measure_s:
                await asyncio.sleep(5.0)
                waiting_seen.append(_waiting(await _limiter_figures(http, limiter_url)) or 0)
            cpu, wall = cpu_seconds(worker.proc.pid) - cpu0, time.time() - t0
            after = (await scrape_metrics([worker], timeout=60) or [""])[0]
        try:
            spy.wait(plan.measure_s + 60)
        except subprocess.TimeoutExpired:
            spy.kill()
        collapsed = profile.read_text() if profile.exists() else ""
        total, shares = profile_shares(collapsed, {"coordinator": COORDINATOR_CODE, "dispatch": DISPATCH_CODE})
        where = profile_summary(profile, top=12) if profile.exists() else []
        return measure_active(sites, plan, before, after, cpu, wall, total, shares, waiting_seen,
                              {"ramp_s": ramp_s, "run": rig.name, "rss_peak_mb": peak_rss_mb(worker.proc.pid),
                               "load": os.getloadavg()[0], "profile": where,
                               "coordinator_entries": [(name, n / total) for name, n in
                                                       entry_breakdown(collapsed, COORDINATOR_CODE)] if total else []})
    finally:
        if plan.profiles and profile.exists():
            plan.profiles.mkdir(parents=True, exist_ok=True)
            profile.replace(plan.profiles / f"sites-{sites}.collapsed")
        profile.unlink(missing_ok=True)
        await rig.stop()


def measure_active(sites: int, plan: Plan, before: str, after: str, cpu: float, wall: float, samples: int,
                   shares: dict[str, int], waiting_seen: list[int], extra: dict[str, Any]) -> dict[str, Any]:
    """The figures of one active-sites level from two /metrics scrapes, the CPU used and py-spy's shares."""
    def hist(name: str, budget: str | None = OPENAI) -> dict[float, float]:
        return histogram_delta(parse_histogram(after, name, budget), parse_histogram(before, name, budget))

    overhead, overhead_all = hist("blogstream_permit_overhead_seconds"), hist("blogstream_permit_overhead_seconds", None)
    waits = hist("blogstream_permit_wait_seconds")
    grants = (labelled_value(after, "blogstream_limiter_grants_total", "budget", OPENAI)
              - labelled_value(before, "blogstream_limiter_grants_total", "budget", OPENAI))
    coordinator_cpu = cpu * shares.get("coordinator", 0) / samples if samples else None
    dispatch_cpu = cpu * shares.get("dispatch", 0) / samples if samples else None
    return {
        "sites": sites, "concurrency": plan.concurrency, "requests": plan.requests, "measure_s": wall,
        "waiting_min": min(waiting_seen, default=None), "waiting_max": max(waiting_seen, default=None),
        "grants": grants, "grants_per_s": grants / wall if wall else 0.0, "limit_per_s": OPENAI_RPM / WINDOW,
        "p50": quantile(overhead, 0.5), "p99": quantile(overhead, 0.99),
        "p99_all": quantile(overhead_all, 0.99), "permits_all": max(overhead_all.values(), default=0.0),
        "wait_p50": quantile(waits, 0.5), "worker_cores": cpu / wall if wall else None,
        "worker_cpu_per_1000": per_thousand(cpu, grants), "coordinator_cpu_per_1000": per_thousand(coordinator_cpu, grants),
        "coordinator_cores": coordinator_cpu / wall if coordinator_cpu is not None and wall else None,
        "dispatch_cpu_per_1000": per_thousand(dispatch_cpu, grants), "samples": samples,
        "reasks": counter_total(after, "blogstream_permit_reasks_total") - counter_total(before, "blogstream_permit_reasks_total"),
        "expired": counter_total(after, "blogstream_permits_expired_total") - counter_total(before, "blogstream_permits_expired_total"),
        **extra,
    }


async def run_queued(plan: Plan, queued: int, log: Any = print) -> dict[str, Any]:
    """One queued level: N requests read into the worker's generate stage while nothing may leave."""
    rig = await _rig(plan, rpm=QUEUED_RPM, window=60.0, concurrency=200, read_ahead=queued + 1_000,
                     queue_limit=2 * queued).start()
    try:
        assert rig.pipeline is not None and rig.outcomes is not None
        p = rig.pipeline
        names = [f"q-{i:05d}" for i in range(plan.queued_sites)]
        await rig.outcomes.add_sites(names)
        worker = rig.start_worker()
        await p.wait_for_topics()
        await p.wait_ready()
        await asyncio.sleep(5.0)
        idle_mb = _rss_mb(worker.proc.pid)
        requests = [p.request(names[i % plan.queued_sites], i) for i in range(queued)]
        started = time.time()
        await p.submit(requests)
        series: list[tuple[float, float]] = []  # (seconds since submit, RSS MB)
        lines = waiting = 0.0
        marks: list[float] = []  # RSS at each poll once the worker holds (almost) all of them
        async with httpx.AsyncClient(timeout=30) as http:
            while time.time() - started < 300:
                await asyncio.sleep(2.0)
                mb = _rss_mb(worker.proc.pid)
                series.append((time.time() - started, mb))
                scrape = (await scrape_metrics([worker], timeout=60) or [""])[0]
                # Not started yet (the stage's per-site lines), and started and waiting at the coordinator.
                lines = labelled_value(scrape, "blogstream_site_queued", "stage", "generate")
                waiting = float(_waiting(await _limiter_figures(http, worker.url("/api/limiter"))) or 0)
                if lines + waiting >= 0.98 * queued:
                    marks.append(mb)
                    if len(marks) >= 4 and max(marks[-4:]) - min(marks[-4:]) <= 1.0:
                        break
        held = lines + waiting
        rss_mb = _rss_mb(worker.proc.pid)
        log(f"  [growth] {queued:,} queued ({rig.name}): {lines:,.0f} in the stage's lines + {waiting:,.0f} asks "
            f"waiting, RSS {idle_mb:.0f} -> {rss_mb:.0f} MB after {time.time() - started:.0f} s")
        return {"queued": queued, "sites": plan.queued_sites, "held": held, "lines": lines, "waiting": waiting, "idle_mb": idle_mb, "rss_mb": rss_mb,
                "peak_mb": peak_rss_mb(worker.proc.pid), "fill_s": time.time() - started, "series": series,
                "run": rig.name, "load": os.getloadavg()[0]}
    finally:
        await rig.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bytes_per_queued(queued: list[dict[str, Any]]) -> float | None:
    """Slope of RSS over requests held, in bytes per request."""
    fit = slope([float(q["held"]) for q in queued], [q["rss_mb"] for q in queued])
    return None if fit is None else fit * 1024 * 1024


# --------------------------------------------------------------------------- plots and doc


def plot(active: list[dict[str, Any]], queued: list[dict[str, Any]], book: list[dict[str, Any]], out: Path) -> list[str]:
    """Permit latency and coordinator CPU over active sites; RSS over queued requests (PNG file names)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    if active:
        xs = [r["sites"] for r in active]
        fig, (lat, cpu) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("p50", "p50"), ("p99", "p99")):
            lat.plot(xs, [1000 * (r[key] or 0) for r in active], marker="o", label=f"permit latency {label}")
        lat.set_xscale("log")
        lat.set_yscale("log")
        lat.set_xlabel("active sites (the same asks waiting at every level)")
        lat.set_ylabel("ms (OpenAI permits, steady state)")
        lat.legend(fontsize=8)
        cpu.plot(xs, [r["coordinator_cpu_per_1000"] or 0 for r in active], marker="o", label="coordinator (py-spy share)")
        cpu.plot(xs, [r["worker_cpu_per_1000"] or 0 for r in active], marker="o", label="its whole worker process")
        same = [b for b in book if b["waiting"] == max(x["waiting"] for x in book)]
        if same:
            cpu.plot([b["sites"] for b in same], [b["cpu_per_1000"] for b in same], marker="s", linestyle="--",
                     label=f"book alone, {same[0]['waiting']:,} asks waiting")
        cpu.set_xscale("log")
        cpu.set_yscale("log")
        cpu.set_xlabel("active sites")
        cpu.set_ylabel("CPU seconds per 1,000 OpenAI grants")
        cpu.legend(fontsize=8)
        fig.suptitle(f"Active sites: one worker running the coordinator, {OPENAI_RPM} OpenAI requests per "
                     f"{WINDOW:.0f} s", fontsize=10)
        names.append(save_png(plt, fig, out, "sites"))
    if queued:
        fig, (rss, fill) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [q["held"] for q in queued]
        rss.plot(xs, [q["rss_mb"] for q in queued], marker="o", label="RSS holding them")
        rss.plot(xs, [q["peak_mb"] for q in queued], marker="^", label="peak RSS")
        rss.plot(xs, [q["idle_mb"] for q in queued], marker="v", label="RSS before they came")
        per = bytes_per_queued(queued)
        if per is not None:
            base = queued[0]["rss_mb"] - per * queued[0]["held"] / 2 ** 20
            rss.plot(xs, [base + per * x / 2 ** 20 for x in xs], linestyle=":", label=f"fit: {per / 1024:.1f} kB each")
        rss.axhline(300, color="red", linestyle="--", linewidth=1, label="issue's goal: 300 MB")
        rss.set_xlabel("requests queued in the worker (linear: a straight line is linear growth)")
        rss.set_ylabel("worker RSS (MB)")
        rss.legend(fontsize=8)
        for q in queued:
            fill.plot([t for t, _ in q["series"]], [mb for _, mb in q["series"]], label=f"{q['queued']:,} queued")
        fill.set_xlabel("seconds since the requests were submitted")
        fill.set_ylabel("worker RSS (MB)")
        fill.legend(fontsize=8)
        fig.suptitle(f"Queued requests over {queued[0]['sites']:,} sites, one worker, nothing allowed to leave",
                     fontsize=10)
        names.append(save_png(plt, fig, out, "queued"))
    return names


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def report(active: list[dict[str, Any]], queued: list[dict[str, Any]], book: list[dict[str, Any]], plan: Plan,
           started: float, plots: list[str] = ()) -> str:
    p99_ratio = ratio([r["p99"] for r in active])
    coord_ratio = ratio([r["coordinator_cpu_per_1000"] for r in active])
    per = bytes_per_queued(queued)
    lines = [
        "# Growth curves: permits over active sites, memory over queued requests",
        "",
        f"Written by `.venv/bin/python -m stack.bench_growth` (`make bench BENCH=growth`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, code {_commit()}, in "
        f"{time.time() - started:.0f} s on this {os.cpu_count()}-core machine (Kafka, Postgres, the simulator and "
        "whatever else ran share it; the load average is in each row's details). How each figure is measured: the "
        "module's docstring and the notes below the tables.",
        "",
        f"## Active sites: one worker, {plan.concurrency:,} generate events in flight, OpenAI at {OPENAI_RPM} "
        f"requests per {WINDOW:.0f} s",
        "",
        "| Active sites | Asks waiting (min-max) | OpenAI grants/s (limit) | Permit latency p50 / p99 "
        "| Coordinator CPU per 1,000 grants | Worker CPU per 1,000 grants | Worker cores | Dispatch CPU per 1,000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in active:
        lines.append(
            f"| {r['sites']:,} | {r['waiting_min'] or 0:,}-{r['waiting_max'] or 0:,} | {r['grants_per_s']:.1f} "
            f"({r['limit_per_s']:.0f}) | {_ms(r['p50'])} / {_ms(r['p99'])} | {_s(r['coordinator_cpu_per_1000'])} "
            f"| {_s(r['worker_cpu_per_1000'])} | {r['worker_cores'] or 0:.2f} | {_s(r['dispatch_cpu_per_1000'])} |")
    if active:
        lines += ["", f"Permit p99, largest over smallest: **{_x(p99_ratio)}** (goal <= {GOAL_P99_RATIO}x: "
                  f"{'met' if p99_ratio is not None and p99_ratio <= GOAL_P99_RATIO else '**not met**'}). "
                  f"Coordinator CPU per 1,000 grants, largest over smallest: **{_x(coord_ratio)}** (goal: flat).", ""]
        for r in active:
            lines.append(
                f"- {r['sites']:,} sites ({r['run']}): {r['requests']:,} requests submitted, line built in "
                f"{r['ramp_s']:.0f} s, measured {r['measure_s']:.0f} s: {r['grants']:.0f} OpenAI grants, "
                f"{r['permits_all']:.0f} permits of every budget (p99 {_ms(r['p99_all'])}), permit wait incl. "
                f"queueing p50 {_ms(r['wait_p50'])}, {r['reasks']:.0f} re-asks, {r['expired']:.0f} expired; "
                f"{r['samples']:,} py-spy samples, coordinator {r['coordinator_cores'] or 0:.2f} cores; worker peak RSS {r['rss_peak_mb']:.0f} MB; load {r['load']:.1f}.")
    if any(r.get("coordinator_entries") for r in active):
        lines += ["", "The coordinator's CPU per 1,000 grants by where its py-spy samples entered its code (the "
                  "worker's CPU times each entry's share of the samples):", ""]
        for r in active:
            entries = ", ".join(f"`{name}` {(r['worker_cpu_per_1000'] or 0) * share:.2f} s"
                                for name, share in r.get("coordinator_entries") or [])
            lines.append(f"- {r['sites']:,} sites: {entries or 'none'}")
    if active and active[-1].get("profile"):
        lines += ["", f"Where the worker's CPU went at {active[-1]['sites']:,} active sites (py-spy, the measured "
                  "stretch):", ""] + active[-1]["profile"]
    if queued:
        lines += [
            "", f"## Queued requests: one worker, {queued[0]['sites']:,} sites, OpenAI at {QUEUED_RPM} request a minute",
            "", "| Queued | Held by the worker | RSS before | RSS holding them | Peak RSS | (RSS - before) / queued |",
            "|---|---|---|---|---|---|",
        ]
        for q in queued:
            lines.append(
                f"| {q['queued']:,} | {q['held']:,.0f} | {q['idle_mb']:.0f} MB | {q['rss_mb']:.0f} MB | "
                f"{q['peak_mb']:.0f} MB | {1024 * (q['rss_mb'] - q['idle_mb']) / max(q['held'], 1):.1f} kB |")
        lines += ["", "Bytes per queued request (slope of RSS over requests held): **"
                  + ("n/a" if per is None else f"{per:,.0f} bytes ({per / 1024:.1f} kB)") + "**.", ""]
    if book:
        lines += ["", "## The coordinator's book alone (streams/limiter/book.py, no Kafka)", "",
                  "| Sites | Asks waiting | CPU per 1,000 grants |", "|---|---|---|"]
        lines += [f"| {b['sites']:,} | {b['waiting']:,} | {b['cpu_per_1000']:.2f} s |" for b in book]
        lines.append("")
    lines += [f"![{name}]({name})" for name in plots] + ([""] if plots else [])
    return "\n".join(lines)


async def run_all(plan: Plan, parts: set[str]) -> tuple[list, list, list]:
    book = [book_cost(s, w, plan.book_grants) for s, w in plan.book_cases] if "book" in parts else []
    for b in book:
        print(f"  [growth] book: {b['sites']:,} sites, {b['waiting']:,} waiting: {b['cpu_per_1000']:.2f} s per 1,000 "
              "grants", flush=True)
    active = []
    for sites in plan.site_levels if "sites" in parts else ():
        active.append(await run_active(plan, sites, log=lambda m: print(m, flush=True)))
    queued = []
    for n in plan.queued_levels if "queued" in parts else ():
        queued.append(await run_queued(plan, n, log=lambda m: print(m, flush=True)))
    return active, queued, book


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small levels, a smoke run; the doc is left alone")
    parser.add_argument("--only", choices=["sites", "queued", "book"], action="append",
                        help="run only these parts (repeatable); the doc is left alone")
    parser.add_argument("--measure-seconds", type=float, help="each active-sites level's measured stretch "
                        "(default: 180, --quick 15)")
    parser.add_argument("--profiles", metavar="DIR", help="keep each active-sites level's py-spy stacks "
                        "(collapsed, sites-N.collapsed) in DIR")
    parser.add_argument("--out", default=str(DOCS / "bench-growth.md"), help="the doc; its plots go next to it")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.measure_seconds:
        plan = dataclasses.replace(plan, measure_s=args.measure_seconds)
    if args.profiles:
        plan = dataclasses.replace(plan, profiles=Path(args.profiles))
    started = time.time()
    active, queued, book = asyncio.run(run_all(plan, set(args.only or ("sites", "queued", "book"))))
    out = Path(args.out)
    writing = not args.quick and not args.only
    text = report(active, queued, book, plan, started, plot(active, queued, book, out) if writing else [])
    print(text)
    if writing:
        write_doc(out, text)
        print(f"[bench-growth] wrote {out}")


if __name__ == "__main__":
    main()
