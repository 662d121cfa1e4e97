"""Costs and spend caps on real workers (issue 14): what is recorded is what the providers bill,
and a capped site stops within the stated overspend bound, then goes on when its cap is raised."""
from __future__ import annotations

import asyncio

from decimal import Decimal

import asyncpg
import httpx

from stack.bench_budget import MAX_TOKENS, dearest_call, settled
from stack.harness import summarize

SITES = ["cost-a", "cost-b", "cost-c"]
OPENAI_MODEL = "gpt-4o-mini"
IMAGE_MODEL = "black-forest-labs/flux-schnell"


async def spent(outcomes, site_id: str | None = None) -> tuple[Decimal, dict[str, Decimal]]:
    """(all recorded dollars, dollars per provider) in the run's database."""
    conn = await asyncpg.connect(outcomes.dsn)
    try:
        rows = await conn.fetch(
            "SELECT provider, coalesce(sum(cost_usd), 0) AS usd, count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced "
            "FROM request_costs WHERE $1::text IS NULL OR site_id = $1 GROUP BY provider", site_id)
    finally:
        await conn.close()
    assert all(r["unpriced"] == 0 for r in rows)
    by_provider = {r["provider"]: Decimal(r["usd"]) for r in rows}
    return sum(by_provider.values(), Decimal(0)), by_provider


def billed_usd(ledger: dict) -> Decimal:
    """What the simulators billed in all (their ledger's `billing`)."""
    return Decimal(str(ledger["openai"]["billing"]["usd"])) + Decimal(str(ledger["replicate"]["billing"]["usd"]))


async def test_recorded_costs_sum_to_what_the_simulators_bill(pipeline, sim, outcomes):
    # Faults that cost nothing: 5xx (not billed), failed predictions (flux bills no image), each tried again.
    sim.configure({"openai": {"error_rate": 0.1}, "replicate": {"fail_rate": 0.15}})
    await outcomes.add_sites(SITES)
    requests = [pipeline.request(site, n) for site in SITES for n in range(12)]
    pipeline.settings.update(openai_max_tokens=MAX_TOKENS, max_attempts=8, retry_base_seconds=0.05)
    worker = pipeline.start_worker()
    await pipeline.submit(requests)
    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=240, workers=pipeline.workers)
    assert "PENDING" not in summarize(rows), summarize(rows)

    ledger = sim.ledger()
    billed = billed_usd(ledger)
    total, by_provider = await spent(outcomes)
    assert billed > 0 and ledger["openai"]["errors_5xx"] > 0 and ledger["replicate"]["predictions_failed"] > 0
    assert abs(total - billed) <= billed * Decimal("0.001"), (total, billed, by_provider)
    print(f"recorded {total:.6f} USD, simulators billed {billed:.6f} USD ({len(requests)} requests)")

    async with httpx.AsyncClient(base_url=worker.url(), timeout=30) as http:
        answer = (await http.get(f"/api/sites/{SITES[0]}/costs", params={"by": "model"})).json()
        site_total, _ = await spent(outcomes, SITES[0])
        assert abs(answer["total_usd"] - float(site_total)) < 1e-9 and answer["budget_exhausted"] is None
        assert {r["model"] for r in answer["rows"]} == {f"openai:{OPENAI_MODEL}", f"replicate:{IMAGE_MODEL}"}
        assert (await http.get(f"/api/sites/{SITES[0]}/costs", params={"since": "forever"})).status_code == 400
        metrics = (await http.get("/metrics")).text
    assert f'blogstream_cost_usd_total{{model="{OPENAI_MODEL}",provider="openai"}}' in metrics


async def test_a_capped_site_stops_within_the_bound_and_goes_on_when_the_cap_is_raised(pipeline, sim, outcomes):
    capped, free, in_flight = "capped-shop", "free-shop", 4
    await outcomes.add_sites([capped], max_in_flight=in_flight)
    await outcomes.add_sites([free])
    pipeline.settings.update(openai_max_tokens=MAX_TOKENS)
    workers = [pipeline.start_worker(), pipeline.start_worker()]
    await pipeline.wait_ready()
    cap = 0.01  # about three requests (an article and an image cost about 0.0035)
    async with httpx.AsyncClient(base_url=workers[0].url(), timeout=30) as http:
        r = await http.patch(f"/api/sites/{capped}", json={"monthly_budget_usd": cap})
        assert r.status_code == 200 and r.json()["monthly_budget_usd"] == cap
        requests = [pipeline.request(capped, n) for n in range(30)]
        others = [pipeline.request(free, n) for n in range(5)]
        await pipeline.submit(requests + others)
        ids = [r["request_id"] for r in requests]

        # Every request of the capped site ends DONE or waits parked; the other site is not held.
        other_rows = await outcomes.wait_final([r["request_id"] for r in others], timeout=120, workers=workers)
        assert summarize(other_rows) == {"DONE": 5}
        conn = await asyncpg.connect(outcomes.dsn)
        try:  # until the site can spend nothing more (stack/bench_budget.py says what that takes)
            done, parked, waiting = await settled(conn, sim, capped, ids, timeout=120)
            waiting_id = await conn.fetchval("SELECT request_id FROM parked_events WHERE site_id = $1 LIMIT 1", capped)
        finally:
            await conn.close()
        total, _ = await spent(outcomes, capped)
        bound = in_flight * dearest_call()
        assert Decimal(str(cap)) <= total <= Decimal(str(cap)) + bound, (total, cap, bound)
        print(f"cap {cap} USD: spent {total:.6f} USD, overspend {total - Decimal(str(cap)):.6f} <= bound {bound:.6f} "
              f"({done} requests done, {parked} parked, {waiting} waiting for a slot)")
        assert done + parked + waiting == len(ids) and parked > 0

        # Visible: the site says why its requests wait, and the intake refuses more with 429 budget_exhausted.
        view = (await http.get(f"/api/sites/{capped}/costs")).json()
        assert view["budget_exhausted"] == "month" and abs(view["spent_this_month_usd"] - float(total)) < 1e-9
        blog = (await http.get(f"/api/blogs/{waiting_id}")).json()
        assert blog["status"] == "PENDING" and blog["waiting"] == "budget_exhausted"
        await asyncio.sleep(2.5)  # the intake reads sites through the workers' 2-second site cache
        refused = await http.post("/api/blogs", json=pipeline.request(capped, 99))
        assert refused.status_code == 429 and refused.json()["code"] == "budget_exhausted"
        assert int(refused.headers["Retry-After"]) >= 1

        # A raised cap releases the waiting requests: they all finish, nothing lost or paid twice.
        r = await http.patch(f"/api/sites/{capped}", json={"monthly_budget_usd": 10})
        assert r.status_code == 200 and r.json()["budget_exhausted"] is None
        rows = await outcomes.wait_final(ids, timeout=180, workers=workers)
        assert summarize(rows) == {"DONE": len(ids)}
        blog = (await http.get(f"/api/blogs/{ids[0]}")).json()
        assert blog["waiting"] is None and blog["cost_usd"] > 0 and blog["paid_calls"] >= 2  # an article, an image
    ledger = sim.ledger()
    assert ledger["wix"]["posts_per_site"][capped] == len(ids)  # each published once
    billed = billed_usd(ledger)
    assert abs((await spent(outcomes))[0] - billed) <= billed * Decimal("0.001")  # parked and released: still exact
