"""The global limiter across worker processes, against a simulator that keeps a ledger.

The simulator enforces its own limits (a request over them gets a 429 and is
not admitted). To see what *our* limiter does, two of these tests give the
simulator twice our budget: any window of its ledger holding more than our
limit would be our limiter's fault, with nothing clipping it.

Windows are 10 s (settings and simulator alike) to keep the tests short.
"""
from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from stack.bench_limiter import WORKER_ENV
from stack.harness import summarize

W = 10.0
GRACE = 0.3
SEED_FIELDS = {"queueLength", "requestsInLastMinute", "maxRPM", "rpmUsagePercent", "tpmUsagePercent"}


def limiter_settings(*, openai_rpm: int, openai_tpm: int = 1_000_000, replicate_rpm: int = 1000,
                     wix_site_rpm: int = 1000) -> dict:
    return {
        "budget_window_seconds": W,
        "permit_grace_seconds": GRACE,
        "openai_rpm": openai_rpm,
        "openai_tpm": openai_tpm,
        "replicate_rpm": replicate_rpm,
        "wix_site_rpm": wix_site_rpm,
        "heartbeat_seconds": 2,
    }


def sim_limits(*, openai_rpm: int, openai_tpm: int = 1_000_000, replicate_rpm: int = 1000, wix_site_rpm: int = 1000,
               latency_scale: float = 0.2, external_rpm: float = 0) -> dict:
    return {
        "window_seconds": W,
        "latency_scale": latency_scale,
        "openai": {"rpm": openai_rpm, "tpm": openai_tpm, "external_rpm": external_rpm, "error_rate": 0.0},
        "replicate": {"create_rpm": replicate_rpm, "external_rpm": 0, "error_rate": 0.0},
        "wix": {"site_rpm": wix_site_rpm, "external_rpm": 0, "error_rate": 0.0},
    }


@pytest.fixture
def worker_env(monkeypatch):
    """Faust settings for the workers we start (fast failure detection)."""
    for key, value in WORKER_ENV.items():
        monkeypatch.setenv(key, value)


async def get_json(http: httpx.AsyncClient, url: str) -> dict:
    r = await http.get(url)
    r.raise_for_status()
    return r.json()


async def start_backlog(pipeline, outcomes, sites: list[str], *, workers: int, per_site: int):
    """Start `workers` worker processes, then submit `per_site` requests for each site."""
    await outcomes.add_sites(sites)
    started = [pipeline.start_worker() for _ in range(workers)]
    await pipeline.wait_for_topics()
    await pipeline.wait_ready()
    requests = [pipeline.request(site, n) for n in range(per_site) for site in sites]
    await pipeline.submit(requests)
    return started, requests


async def coordinator_of(workers) -> object:
    """The worker whose /metrics says it runs the limiter coordinator."""
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(60):
            for w in workers:
                if not w.alive:
                    continue
                try:
                    text = (await http.get(w.url("/metrics"))).text
                except httpx.HTTPError:
                    continue
                if re.search(r"^blogstream_limiter_coordinator 1\.0$", text, re.M):
                    return w
            await asyncio.sleep(0.5)
    raise AssertionError("no worker reports running the limiter coordinator")


async def test_three_workers_share_one_budget_and_no_window_exceeds_any_limit(pipeline, sim, outcomes, worker_env):
    ours = {"openai_rpm": 20, "openai_tpm": 18_000, "replicate_rpm": 15, "wix_site_rpm": 8}
    # The simulator allows twice as much: only our limiter keeps the ledger within `ours`.
    sim.configure(sim_limits(**{k: 2 * v for k, v in ours.items()}))
    pipeline.settings = limiter_settings(**ours)
    sites = ["north", "south", "east"]
    workers, requests = await start_backlog(pipeline, outcomes, sites, workers=3, per_site=12)

    # While the backlog drains: every worker answers for the same, global budget.
    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.sleep(4)
        views = [await get_json(http, w.url("/api/rate-limiter/stats")) for w in workers]
        replicate_views = [await get_json(http, w.url("/api/replicate-rate-limiter/stats")) for w in workers]
        internals = [await get_json(http, w.url("/api/limiter")) for w in workers]
    for view in views:
        assert SEED_FIELDS <= set(view)
        assert view["maxRPM"] == ours["openai_rpm"] and view["windowSeconds"] == W
        assert 0 <= view["requestsInLastMinute"] <= ours["openai_rpm"]
    for view in replicate_views:
        assert {"queueLength", "requestsInLastMinute", "maxRPM", "rpmUsagePercent"} <= set(view)
        assert view["maxRPM"] == ours["replicate_rpm"]
    assert len({i["coordinator"] for i in internals}) == 1, "every worker must ask the same coordinator"
    assert max(v["queueLength"] for v in views) > 0, "the backlog should be waiting for the budget"

    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=150, workers=workers)
    assert summarize(rows) == {"DONE": len(requests)}

    ledger = sim.ledger()
    assert ledger["openai"]["max_requests_in_window"] <= ours["openai_rpm"]
    assert ledger["openai"]["max_requests_in_window_recomputed"] <= ours["openai_rpm"]
    assert ledger["openai"]["max_tokens_in_window_enforced"] <= ours["openai_tpm"]
    assert ledger["replicate"]["max_requests_in_window"] <= ours["replicate_rpm"]
    for site in sites:
        assert ledger["wix"]["per_site"][site]["max_requests_in_window"] <= ours["wix_site_rpm"]
    assert all(ledger[p]["rejected_429"] == 0 for p in ("openai", "replicate", "wix"))
    # The budgets were really contested, or the test proves nothing.
    assert ledger["openai"]["max_requests_in_window"] >= ours["openai_rpm"] - 2
    assert max(ledger["wix"]["per_site"][s]["max_requests_in_window"] for s in sites) >= ours["wix_site_rpm"] - 1

    # The same figures as Prometheus metrics, and the seed's heartbeat line, on every worker.
    permits_seen = 0
    async with httpx.AsyncClient(timeout=10) as http:
        for w in workers:
            text = (await http.get(w.url("/metrics"))).text
            assert re.search(r'^blogstream_budget_limit\{budget="openai_requests"\} 20\.0$', text, re.M), w.name
            assert "# TYPE blogstream_permit_overhead_seconds histogram" in text
            permits_seen += 'blogstream_permit_overhead_seconds_bucket{budget="openai_requests"' in text
            assert re.search(r"\[Blog Worker\] Heartbeat - cycle \d+ \| Queue: \d+ \| OpenAI RPM: \d+/20 ", w.log_text())
    assert permits_seen >= 1


async def test_leases_serve_permits_without_a_round_trip_and_stop_when_the_budget_fills(pipeline, sim, outcomes,
                                                                                         worker_env):
    """Replicate has room at first (workers take leases), then the backlog fills it (one by one again)."""
    ours = {"openai_rpm": 200, "replicate_rpm": 40, "wix_site_rpm": 200}
    sim.configure(sim_limits(**{k: 2 * v for k, v in ours.items()}))  # only our limiter keeps us within `ours`
    pipeline.settings = {**limiter_settings(**ours), "permit_lease_seconds": 5.0}  # leases of up to 4 units
    workers, requests = await start_backlog(pipeline, outcomes, ["left", "right"], workers=2, per_site=35)
    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=150, workers=workers)
    assert summarize(rows) == {"DONE": len(requests)}

    ledger = sim.ledger()
    assert ledger["replicate"]["max_requests_in_window"] <= ours["replicate_rpm"]
    assert ledger["replicate"]["max_requests_in_window"] >= ours["replicate_rpm"] - 2, "the budget was contested"
    assert all(ledger[p]["rejected_429"] == 0 for p in ("openai", "replicate", "wix"))
    leased = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for w in workers:
            text = (await http.get(w.url("/metrics"))).text
            leased += sum(float(v) for v in re.findall(
                r'^blogstream_permits_leased_total\{budget="replicate_requests"\} ([0-9.e+]+)$', text, re.M))
    assert leased >= 2, "permits should have been taken from leases while the budget had room"


async def test_killing_the_coordinator_mid_run_neither_resets_nor_exceeds_the_budget(pipeline, sim, outcomes,
                                                                                     worker_env):
    ours = {"openai_rpm": 20}
    sim.configure(sim_limits(openai_rpm=40, latency_scale=0.3))
    pipeline.settings = limiter_settings(**ours)
    workers, requests = await start_backlog(pipeline, outcomes, ["alpha", "beta"], workers=2, per_site=25)

    # Mid-run: about a third of the OpenAI calls made, the window full.
    deadline = time.time() + 90
    while sim.ledger()["openai"]["admitted"] < 16:
        assert time.time() < deadline, "the run did not get going"
        await asyncio.sleep(0.3)
    victim = await coordinator_of(workers)
    survivor = next(w for w in workers if w is not victim)
    victim.kill()
    killed_at = time.time()

    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=180, workers=[survivor])
    stuck = {rid: (row["status"], row.get("stage")) for rid, row in rows.items() if row["status"] != "DONE"}
    if stuck:
        async with httpx.AsyncClient(timeout=10) as http:
            limiter_view = await get_json(http, survivor.url("/api/limiter"))
        raise AssertionError(f"not done: {stuck}; limiter: {limiter_view}; survivor log {survivor.log_path}")
    assert summarize(rows) == {"DONE": len(requests)}

    ledger = sim.ledger()
    assert ledger["openai"]["max_requests_in_window"] <= ours["openai_rpm"]
    assert ledger["openai"]["max_requests_in_window_recomputed"] <= ours["openai_rpm"]
    assert ledger["openai"]["rejected_429"] == 0
    # The survivor took over with the dead coordinator's windows, not from zero.
    log = survivor.log_text()
    took_over = re.findall(r"limiter coordinator active \(instance \S+\): \d+ budgets, (\d+) grants in windows "
                           r"recovered \(took over from", log)
    assert took_over and int(took_over[-1]) > 0, log[-3000:]
    assert "no recovered state" not in log
    # Calls the survivor made right after the takeover still respect the dead one's grants:
    events = sorted(e[0] for e in sim.events("openai") if not e[3])
    after = [t for t in events if t >= killed_at]
    assert after, "nothing was called after the kill"


async def test_someone_else_on_the_same_key_the_budget_adapts_then_climbs_back(pipeline, sim, outcomes, worker_env):
    limit = 30
    external_per_window = 12
    sim.configure(sim_limits(openai_rpm=limit, external_rpm=external_per_window * 60 / W, latency_scale=0.2))
    pipeline.settings = limiter_settings(openai_rpm=limit)
    _, requests = await start_backlog(pipeline, outcomes, ["solo-1", "solo-2"], workers=1, per_site=70)

    async with httpx.AsyncClient(timeout=10) as http:
        url = pipeline.workers[0].url("/api/rate-limiter/stats")
        # Adapting: the first window or two may see 429s, then the limiter leaves room for the other client.
        await asyncio.sleep(2.5 * W)
        adapted = await get_json(http, url)
        before = sim.ledger()["openai"]
        await asyncio.sleep(3 * W)
        ledger = sim.ledger()["openai"]
        rejected_steady = ledger["rejected_429"] - before["rejected_429"]
        admitted_steady = ledger["admitted"] - before["admitted"]
        assert adapted["effectiveRPM"] <= limit - external_per_window, adapted
        assert rejected_steady <= 2, f"{rejected_steady} 429s after adapting ({before['rejected_429']} while adapting)"
        assert admitted_steady >= 2 * (limit - external_per_window) - 6, "adapting must not starve us"
        assert ledger["external_rejected"] - before["external_rejected"] <= 3, "nor crowd the other client out"

        # The other client stops: the budget climbs back to the whole limit.
        sim.configure({"openai": {"external_rpm": 0}})
        deadline = time.time() + 6 * W
        while True:
            view = await get_json(http, url)
            if view["effectiveRPM"] == limit:
                break
            assert time.time() < deadline, f"the budget did not climb back: {view}"
            await asyncio.sleep(1)
    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=120, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": len(requests)}
