"""Benchmark of the global limiter: 1, 2 and 3 workers draining a backlog.

    .venv/bin/python -m stack.bench_limiter            # writes docs/bench-limiter.md and prints the table
    .venv/bin/python -m stack.bench_limiter --quick    # smaller backlog, for a smoke run

Each run gets its own simulator process (so nothing else hitting the shared
simulators can spoil its ledger), its own database and topics, and drains a
backlog of N blog requests through the whole pipeline. The simulator enforces
its limits over a short sliding window and answers after seconds; it counts
every 429 and the busiest window. See docs/limiter.md for what is measured.

The `LimiterRig` below is shared with tests/integration/test_global_limiter.py.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stack.harness import STACK_DIR, Outcomes, Pipeline, Simulators, Worker, free_port

# Extra environment for the workers (the app's own defaults already set a 10 s
# session timeout and 50 records per poll, see streams/settings.py).
WORKER_ENV: dict[str, str] = {}


@dataclass
class LimiterRig:
    """A private simulator process + private database + pipeline, for limiter experiments."""

    sim_config: dict[str, Any]
    settings: dict[str, Any]
    extra_env: dict[str, str] = field(default_factory=lambda: dict(WORKER_ENV))
    sim: Simulators | None = None
    pipeline: Pipeline | None = None
    outcomes: Outcomes | None = None

    async def start(self) -> "LimiterRig":
        self.sim = Simulators.start(self.sim_config)
        self.outcomes = await Outcomes.private()
        self.pipeline = Pipeline(database=self.outcomes.database, sim_url=self.sim.url, settings=dict(self.settings))
        return self

    @property
    def name(self) -> str:
        assert self.pipeline is not None
        return self.pipeline.name

    def start_worker(self) -> Worker:
        assert self.pipeline is not None
        p = self.pipeline
        n = len(p.workers) + 1
        env = p.env()
        env.update(self.extra_env)
        worker = Worker(f"{p.name}-w{n}", env, free_port(), p.log_dir / f"{p.name}-w{n}.log")
        p.workers.append(worker.start())
        return worker

    async def stop(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.sim is not None:
            self.sim.stop()
        if self.outcomes is not None:
            try:
                await self.outcomes.drop()
            except Exception as exc:  # a leftover database costs disk, not the run's figures
                print(f"[bench-limiter] could not drop the run's database {self.outcomes.database}: {exc}", flush=True)


# --------------------------------------------------------------------------- measurements


def window_counts(times: list[float], window: float, start: float, end: float, step: float = 0.05) -> list[int]:
    """Arrivals in (t - window, t] for t on a grid from start to end."""
    times = sorted(times)
    out = []
    lo = hi = 0
    t = start
    while t <= end + 1e-9:
        while hi < len(times) and times[hi] <= t:
            hi += 1
        while lo < hi and times[lo] <= t - window:
            lo += 1
        out.append(hi - lo)
        t += step
    return out


def window_sums(events: list[tuple[float, float]], window: float, start: float, end: float, step: float = 0.05) -> list[float]:
    """Sum of amounts arriving in (t - window, t] on a grid (events: (time, amount))."""
    events = sorted(events)
    out = []
    lo = hi = 0
    total = 0.0
    t = start
    while t <= end + 1e-9:
        while hi < len(events) and events[hi][0] <= t:
            total += events[hi][1]
            hi += 1
        while lo < hi and events[lo][0] <= t - window:
            total -= events[lo][1]
            lo += 1
        out.append(total)
        t += step
    return out


def enforced_token_sums(events: list[list[Any]], window: float, start: float, end: float,
                        step: float = 0.05) -> list[float]:
    """What the provider counts against its token limit at each grid point, for our calls.

    A call admitted at t counts in (t, t + W]: its admission charge (prompt +
    max_tokens) until it settles, its real usage after (events: the simulator's
    [t, site, settled, external, charged, settled_at]).
    """
    changes: list[tuple[float, float]] = []
    for t, _, settled, external, *rest in events:
        if external:
            continue
        charged = float(rest[0]) if rest else float(settled)
        settled_at = rest[1] if len(rest) > 1 and rest[1] is not None else None
        changes.append((t, charged))
        if settled_at is not None and settled_at < t + window:
            changes.append((settled_at, float(settled) - charged))
            changes.append((t + window, -float(settled)))
        else:
            changes.append((t + window, -charged))
    return running_totals(changes, start, end, step)


def running_totals(changes: list[tuple[float, float]], start: float, end: float, step: float) -> list[float]:
    """The sum of every (time, delta) change at or before each grid point from start to end."""
    changes = sorted(changes)
    sums, total, i, t = [], 0.0, 0, start
    while t <= end:
        while i < len(changes) and changes[i][0] <= t:
            total += changes[i][1]
            i += 1
        sums.append(total)
        t += step
    return sums


def steady_utilization(times: list[float], limit: float, window: float) -> float | None:
    """Mean of (arrivals in the last window / limit) over the saturated part of a drain.

    The part runs from one window after the first call (the window has filled
    up) to the last call (the backlog kept asks waiting all along).
    """
    if len(times) < 2 or times[-1] - times[0] <= window:
        return None
    counts = window_counts(times, window, times[0] + window, max(times))
    return sum(counts) / len(counts) / limit


def parse_histogram(text: str, name: str, budget: str | None = None, where: str | None = None) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram, summed over its labels (or one budget's, or
    those whose labels hold `where`, such as 'generation="2"')."""
    buckets: dict[float, float] = {}
    pattern = re.compile(rf'^{re.escape(name)}_bucket\{{(.*)\}} ([0-9.e+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        if (budget is not None and f'budget="{budget}"' not in m.group(1)) or (where and where not in m.group(1)):
            continue
        le = re.search(r'le="([^"]+)"', m.group(1))
        if le is None:
            continue
        bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(m.group(2))
    return buckets


def scraped_histogram(scrapes: list[str], name: str, budget: str | None = None,
                      where: str | None = None) -> dict[float, float]:
    """One histogram's cumulative buckets summed over every worker's /metrics scrape (or one budget's)."""
    return merge_histograms([parse_histogram(t, name, budget, where) for t in scrapes])


def merge_histograms(hists: list[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for h in hists:
        for bound, count in h.items():
            out[bound] = out.get(bound, 0.0) + count
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """histogram_quantile(): linear interpolation inside the bucket holding the q-th value."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return bounds[-1]


async def scrape_metrics(workers: list[Worker], timeout: float = 10) -> list[str]:
    """Each worker's Prometheus /metrics text (a worker that does not answer is left out)."""
    scrapes = []
    async with httpx.AsyncClient(timeout=timeout) as http:
        for w in workers:
            try:
                scrapes.append((await http.get(w.url("/metrics"))).text)
            except httpx.HTTPError:
                pass
    return scrapes


def counter_total(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                try:
                    total += float(value)
                except ValueError:
                    pass
    return total


# --------------------------------------------------------------------------- plots

DOCS = Path(__file__).resolve().parent.parent / "docs"


def plot_run(sc: "Scenario", run: str, events: list[list[Any]], submitted: float) -> str | None:
    """A PNG next to the doc: the provider's count against its limits over time, and each site's calls.

    Returns its file name (None when matplotlib is not installed or there were no calls).
    """
    ours = [e for e in events if not e[3]]
    if not ours:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    step = 0.25
    start, end = submitted, max(e[0] for e in ours) + sc.window
    grid = [i * step for i in range(int((end - start) / step) + 1)]
    requests = window_counts([e[0] for e in ours], sc.window, start, end, step)
    tokens = enforced_token_sums(ours, sc.window, start, end, step)
    fig, (use, sites) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    use.plot(grid[:len(requests)], [100 * n / sc.openai_rpm for n in requests], label=f"requests in its window / {sc.openai_rpm}")
    use.plot(grid[:len(tokens)], [100 * n / sc.openai_tpm for n in tokens],
             label=f"tokens it counts / {sc.openai_tpm} (charge until settled, then what stays counted)")
    use.axhline(100, color="red", linestyle="--", linewidth=1, label="limit")
    use.set_ylabel("% of the limit (as the provider counts)")
    use.set_ylim(0, 110)
    use.legend(loc="lower center", fontsize=8)
    use.set_title(f"{sc.label}: {sc.requests} blogs, {sc.workers} worker(s), unused tokens "
                  f"{'given back' if sc.refund else 'kept counted'}", fontsize=10)
    by_site: dict[str, list[float]] = {}
    for e in sorted(ours):
        by_site.setdefault(str(e[1]), []).append(e[0] - start)
    for site, ts in sorted(by_site.items()):
        sites.step(ts, range(1, len(ts) + 1), where="post", label=site, linewidth=1)
    sites.set_ylabel("OpenAI calls admitted, per site")
    sites.set_xlabel("seconds since the backlog was submitted")
    if len(by_site) <= 12:
        sites.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    name = "bench-limiter-" + re.sub(r"[^a-z0-9]+", "-", sc.label.lower()).strip("-") + ".png"
    fig.savefig(DOCS / name, dpi=80)
    plt.close(fig)
    return name


# --------------------------------------------------------------------------- one run


@dataclass
class Scenario:
    label: str
    workers: int
    requests: int
    window: float = 30.0
    grace: float = 0.3
    openai_rpm: int = 300
    openai_tpm: int = 10_000_000
    target_words: int = 300
    sites: int = 10
    openai_latency: tuple[float, float] = (1.0, 3.0)
    replicate_latency: tuple[float, float] = (1.0, 2.0)
    # The provider's token rule: unused reserved tokens given back when a call ends (refund) or kept
    # counted for the whole window; and how far its admission estimate is off ours, either way.
    refund: bool = True
    estimate_error: float = 0.0

    def rig(self) -> LimiterRig:
        generous = 4 * self.openai_rpm  # the other providers never bind
        return LimiterRig(
            sim_config={
                "window_seconds": self.window,
                "latency_scale": 1.0,
                "openai": {"rpm": self.openai_rpm, "tpm": self.openai_tpm, "latency": list(self.openai_latency),
                           "error_rate": 0.0, "external_rpm": 0, "refund_unused_tokens": self.refund,
                           "estimate_error": self.estimate_error},
                "replicate": {"create_rpm": generous, "latency": list(self.replicate_latency), "error_rate": 0.0,
                              "external_rpm": 0},
                "wix": {"site_rpm": generous, "error_rate": 0.0, "external_rpm": 0},
            },
            settings={
                "budget_window_seconds": self.window,
                "permit_grace_seconds": self.grace,
                "openai_rpm": self.openai_rpm,
                "openai_tpm": self.openai_tpm,
                "replicate_rpm": generous,
                "wix_site_rpm": generous,
                "heartbeat_seconds": 10,
            },
        )


async def run_scenario(sc: Scenario, log: Any = print) -> dict[str, Any]:
    rig = await sc.rig().start()
    try:
        assert rig.pipeline is not None and rig.outcomes is not None and rig.sim is not None
        p = rig.pipeline
        sites = [f"site-{i:02d}" for i in range(sc.sites)]
        await rig.outcomes.add_sites(sites)
        for _ in range(sc.workers):
            rig.start_worker()
        await p.wait_for_topics()
        await p.wait_ready()
        await asyncio.sleep(2.0)  # let the group settle after the last join
        requests = [p.request(sites[i % sc.sites], i, target_words=sc.target_words) for i in range(sc.requests)]
        load_before = os.getloadavg()[0]
        submitted = time.time()
        await p.submit(requests)
        state = {"last": 0.0, "sampled": 0.0}
        rejections: list[tuple[float, int]] = []  # (time, OpenAI 429s so far): which came after the first window

        def progress(final: int, total: int, rows: Any) -> None:
            if time.time() - state["sampled"] >= 1.0:
                state["sampled"] = time.time()
                rejections.append((time.time(), int(rig.sim.ledger()["openai"].get("rejected_429", 0))))
            if time.time() - state["last"] >= 15:
                state["last"] = time.time()
                log(f"  [{sc.label}] {time.time() - submitted:5.0f}s {final}/{total} final")

        rows = await rig.outcomes.wait_final(
            [r["request_id"] for r in requests], timeout=max(300.0, 4 * sc.requests / sc.openai_rpm * sc.window),
            progress=progress, poll=0.5, workers=p.workers,
        )
        drained = time.time() - submitted
        statuses: dict[str, int] = {}
        for row in rows.values():
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        ledger = rig.sim.ledger()
        events = rig.sim.events("openai")
        learned = [m.group(1) for w in p.workers for m in re.finditer(r"unused reserved tokens are ([a-z ]+);",
                                                                         w.log_text())]
        (STACK_DIR / "logs" / f"{rig.name}-openai-events.json").write_text(json.dumps({"submitted": submitted, "events": events}))
        ours = [(e[0], float(e[2])) for e in events if not e[3]]
        times = sorted(t for t, _ in ours)
        scrapes = await scrape_metrics(p.workers)
        overhead = scraped_histogram(scrapes, "blogstream_permit_overhead_seconds")
        budgets = sorted({b for t in scrapes for b in re.findall(r'blogstream_permit_overhead_seconds_count\{budget="([^"]+)"', t)})
        by_budget = {}
        for b in budgets:
            h = scraped_histogram(scrapes, "blogstream_permit_overhead_seconds", b)
            by_budget[b] = {"permits": max(h.values()) if h else 0, "p50": quantile(h, 0.5), "p99": quantile(h, 0.99)}
        waits = scraped_histogram(scrapes, "blogstream_permit_wait_seconds")
        persist = scraped_histogram(scrapes, "blogstream_limiter_persist_seconds")
        send_delay = scraped_histogram(scrapes, "blogstream_permit_send_delay_seconds")
        openai = ledger["openai"]
        req_util = steady_utilization(times, sc.openai_rpm, sc.window)
        tok_util = None
        tok_counted = None
        if len(times) > 1 and times[-1] - times[0] > sc.window:
            sums = window_sums(ours, sc.window, times[0] + sc.window, times[-1])
            tok_util = sum(sums) / len(sums) / sc.openai_tpm
            counted = enforced_token_sums(events, sc.window, times[0] + sc.window, times[-1])
            tok_counted = sum(counted) / len(counted) / sc.openai_tpm
        # Ideal drain: the backlog's need of the binding budget over its rate, one OpenAI call
        # per blog (requests), or the tokens the blogs really used (tokens).
        settled = sum(amount for _, amount in ours)  # as the provider counted them once settled
        ideal = max(sc.requests / sc.openai_rpm, settled / sc.openai_tpm) * sc.window
        first_window_end = (times[0] + sc.window + sc.grace) if times else submitted
        before = max([n for t, n in rejections if t <= first_window_end] or [0])
        plot = plot_run(sc, rig.name, events, submitted)
        result = {
            "label": sc.label,
            "workers": sc.workers,
            "requests": sc.requests,
            "window": sc.window,
            "grace": sc.grace,
            "rpm": sc.openai_rpm,
            "tpm": sc.openai_tpm,
            "statuses": statuses,
            "drain_s": drained,
            "ideal_s": ideal,
            "calls": len(times),
            "first_call_s": times[0] - submitted if times else None,
            "calls_span_s": times[-1] - times[0] if times else None,
            "util_requests": req_util,
            "util_tokens": tok_util,
            "util_tokens_counted": tok_counted,
            "binding": "requests (RPM)" if (req_util or 0) >= (tok_util or 0) else "tokens (TPM)",
            "ceiling": sc.window / (sc.window + sc.grace),
            "max_requests_in_window": openai.get("max_requests_in_window"),
            "max_tokens_in_window": openai.get("max_tokens_in_window_enforced"),
            "rejected_429": {prov: ledger[prov].get("rejected_429", 0) for prov in ("openai", "replicate", "wix")},
            "rejected_429_after_first_window": openai.get("rejected_429", 0) - before,
            "refund": sc.refund,
            "estimate_error": sc.estimate_error,
            "learned": learned[-1] if learned else None,
            "plot": plot,
            "replicate_max_in_window": ledger["replicate"].get("max_requests_in_window"),
            "replicate_limit": 4 * sc.openai_rpm,
            "tokens_charged": openai.get("tokens_charged_total"),
            "tokens_settled": openai.get("tokens_settled_total"),
            "overhead_p50": quantile(overhead, 0.5),
            "overhead_p99": quantile(overhead, 0.99),
            "overhead_by_budget": by_budget,
            "wait_p50": quantile(waits, 0.5),
            "wait_p99": quantile(waits, 0.99),
            "persist_p50": quantile(persist, 0.5),
            "persist_p99": quantile(persist, 0.99),
            "send_delay_p50": quantile(send_delay, 0.5),
            "send_delay_p99": quantile(send_delay, 0.99),
            "send_delay_max_bucket": max((b for b, c in send_delay.items() if c > 0 and b != math.inf
                                          and c > max([0] + [send_delay[x] for x in send_delay if x < b])), default=None),
            "late_sends": sum(counter_total(t, "blogstream_permit_late_sends_total") for t in scrapes),
            "permits": max(overhead.values()) if overhead else 0,
            "expired": sum(counter_total(t, "blogstream_permits_expired_total") for t in scrapes),
            "reasks": sum(counter_total(t, "blogstream_permit_reasks_total") for t in scrapes),
            "run": rig.name,
            "commit": _commit(),
            "load": (load_before, os.getloadavg()[0]),
        }
        return result
    finally:
        await rig.stop()


def _commit() -> str:
    """The code a run measured: the commit, with "+changes" when the limiter's files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "streams/limiter", "streams/pipeline"],
                                 cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


# --------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{1000 * x:.1f} ms"


def render(results: list[dict[str, Any]], started: float, finished: float | None = None) -> str:
    finished = time.time() if finished is None else finished
    lines = [
        "# Global limiter benchmark",
        "",
        f"Generated by `.venv/bin/python -m stack.bench_limiter` on {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} "
        f"(total {finished - started:.0f} s). Each run drains a backlog of N blog requests through the whole "
        "pipeline (generate, image, publish, sink) on the local Kafka, Postgres and a private simulator process. "
        "The simulator enforces every limit over a sliding window, answers OpenAI calls after 1-3 s and Replicate "
        "after 1-2 s; Replicate and Wix get four times as much as OpenAI, so an OpenAI limit binds: requests, or "
        "tokens with long articles. The simulator's token rule differs by run and nobody tells the workers: unused "
        "reserved tokens *given back* when a call ends, or *kept counted* for the whole window (then each call "
        "counts its admission estimate, prompt / 4 + max_tokens). How each figure is measured: docs/limiter.md, "
        "section \"Reading the benchmark\".",
        "",
        "| run | workers | N | unused tokens | limit (per window) | binding limit | utilization (steady, as the provider counts) "
        "| ceiling W/(W+grace) | busiest window | 429s (OpenAI/Replicate/Wix) | OpenAI 429s after the first window "
        "| learned | drain | ideal | drain/ideal | permit latency p50 / p99 "
        "| permit wait p50 / p99 (incl. queueing) | late sends / expired |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        # Tokens: what the provider counts against its limit (admission charges until they settle).
        util = r["util_requests"] if r["binding"].startswith("requests") else \
            (r.get("util_tokens_counted") or r["util_tokens"])
        limit = f"{r['rpm']} req / {r['window']:.0f} s" if r["binding"].startswith("requests") else \
            f"{r['tpm']} tok / {r['window']:.0f} s"
        busiest = f"{r['max_requests_in_window']} / {r['rpm']} req"
        if r["binding"].startswith("tokens"):
            busiest += f"; {r['max_tokens_in_window']} / {r['tpm']} tok"
        rej = r["rejected_429"]
        rule = "given back" if r.get("refund", True) else "kept counted"
        if r.get("estimate_error"):
            rule += f", estimate off by up to {100 * r['estimate_error']:g}%"
        lines.append(
            f"| {r['label']} | {r['workers']} | {r['requests']} | {rule} | {limit} | {r['binding']} | {_pct(util)} "
            f"| {_pct(r['ceiling'])} | {busiest} | {rej['openai']}/{rej['replicate']}/{rej['wix']} "
            f"| {r.get('rejected_429_after_first_window', 'n/a')} | {r.get('learned') or 'not yet'} "
            f"| {r['drain_s']:.1f} s | {r['ideal_s']:.1f} s | {r['drain_s'] / r['ideal_s']:.3f} "
            f"| {_ms(r['overhead_p50'])} / {_ms(r['overhead_p99'])} | {_ms(r['wait_p50'])} / {_ms(r['wait_p99'])} "
            f"| {int(r['late_sends'])} / {int(r['expired'])} |"
        )
    lines += ["", "Details per run:", ""]
    for r in results:
        lines.append(
            f"- **{r['label']}** ({r['run']}, code {r.get('commit', 'unknown')}): outcomes {r['statuses']}; {r['calls']} OpenAI calls, the first "
            f"{r['first_call_s']:.1f} s after the backlog was submitted, the last {r['calls_span_s']:.1f} s after the first; "
            f"request utilization {_pct(r['util_requests'])}, token utilization {_pct(r.get('util_tokens_counted'))} "
            f"counted as the provider counts them (admission charge until settled), {_pct(r['util_tokens'])} in "
            f"tokens really spent ({r['tokens_charged']} charged at admission, {r['tokens_settled']} settled); "
            f"busiest token window (as the simulator enforced it) {r['max_tokens_in_window']} / {r['tpm']}; "
            f"Replicate busiest window {r['replicate_max_in_window']} / {r['replicate_limit']}; "
            f"coordinator persist p50/p99 {_ms(r['persist_p50'])} / {_ms(r['persist_p99'])}; "
            f"{int(r['permits'])} permits, {int(r['reasks'])} re-asks, {int(r['expired'])} expired; "
            + "".join(f"{b} permits {int(v['permits'])}, latency p50/p99 {_ms(v['p50'])} / {_ms(v['p99'])}; "
                      for b, v in (r.get("overhead_by_budget") or {}).items()) +
            f"grant-to-wire delay p50/p99 {_ms(r['send_delay_p50'])} / {_ms(r['send_delay_p99'])}, "
            f"{int(r['late_sends'])} late sends reported; load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after."
        )
        if r.get("plot"):
            lines += ["", f"  ![{r['label']}]({r['plot']})", ""]
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPUs shared by Kafka, Postgres, the simulator, the workers and whatever else "
        "ran on the box at the time (the load averages above say how busy it was).",
    ]
    return "\n".join(lines) + "\n"


def _tokens_bind(label: str, workers: int, **kw: Any) -> Scenario:
    """Long articles: the token limit binds (the request limit is twice what the tokens allow)."""
    return Scenario(label, workers, 400, openai_rpm=600, openai_tpm=240_000, target_words=1000, **kw)


SCENARIOS = {
    "full": [
        Scenario("requests bind, 1 worker", 1, 800),
        Scenario("requests bind, 3 workers", 3, 800),
        Scenario("requests bind, tokens kept, 1 worker", 1, 800, refund=False),
        Scenario("requests bind, tokens kept, 3 workers", 3, 800, refund=False),
        _tokens_bind("tokens bind, given back, 1 worker", 1),
        _tokens_bind("tokens bind, given back, 3 workers", 3),
        _tokens_bind("tokens bind, kept, 1 worker", 1, refund=False),
        _tokens_bind("tokens bind, kept, 3 workers", 3, refund=False),
        _tokens_bind("tokens bind, kept, estimate off 2%, 3 workers", 3, refund=False, estimate_error=0.02),
    ],
    # The goal at the seed's limits: 5,000 blogs at 450 requests a minute (11 minutes a run).
    "seed": [
        Scenario("seed limits, 1 worker", 1, 5000, window=60.0, grace=0.5, openai_rpm=450),
        Scenario("seed limits, 3 workers", 3, 5000, window=60.0, grace=0.5, openai_rpm=450),
    ],
    "quick": [
        Scenario("1 worker (quick)", 1, 150, window=10, openai_rpm=60),
        Scenario("3 workers (quick)", 3, 150, window=10, openai_rpm=60),
        Scenario("tokens bind, kept, 1 worker (quick)", 1, 80, window=10, openai_rpm=200, openai_tpm=24_000,
                 target_words=1000, refund=False),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small backlogs and a 10 s window (smoke run)")
    parser.add_argument("--set", choices=sorted(SCENARIOS), default=None,
                        help="which scenarios: full (default), seed (5,000 blogs at the seed's limits), quick")
    parser.add_argument("--only", help="run only scenarios whose label contains this text")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "bench-limiter.md"))
    parser.add_argument("--render", metavar="LOG", help="only rebuild the report from the JSON lines of an earlier run's output")
    args = parser.parse_args()
    if args.render:
        log = Path(args.render)
        results = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        first = re.search(r"Generated by .* on (\d{4}-\d\d-\d\d \d\d:\d\d) \(total (\d+) s\)", log.read_text())
        finished = log.stat().st_mtime
        started = time.mktime(time.strptime(first.group(1), "%Y-%m-%d %H:%M")) if first else finished
        report = render(results, started, finished if not first else started + float(first.group(2)))
        Path(args.out).write_text(report)
        print(report)
        return
    scenarios = SCENARIOS[args.set or ("quick" if args.quick else "full")]
    if args.only:
        scenarios = [s for s in scenarios if args.only in s.label]
    started = time.time()
    results = []
    for sc in scenarios:
        print(f"[bench-limiter] {sc.label}: {sc.requests} requests, {sc.workers} worker(s)", flush=True)
        results.append(asyncio.run(run_scenario(sc, log=lambda m: print(m, flush=True))))
        print(json.dumps(results[-1], default=str), flush=True)
    report = render(results, started)
    if not args.quick and not args.only and args.set in (None, "full"):
        Path(args.out).write_text(report)
        print(f"[bench-limiter] wrote {args.out}")
    print(report)


if __name__ == "__main__":
    main()
