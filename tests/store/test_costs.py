"""store/costs.py: costs recorded once per provider call, running totals, spend caps that hold and release."""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import pytest_asyncio

from store.costs import CallCost, Costs, budget_problem
from store.database import Database
from store.parked import ParkedEvent, ParkedEvents
from store.sites import Site

from .conftest import RUN, aio, now, uid


@pytest_asyncio.fixture(autouse=True, scope="module", loop_scope="module")
async def _delete_costs(db: Database):
    yield
    await db.pool.execute("DELETE FROM request_costs WHERE site_id LIKE $1", f"{RUN}-%")
    await db.pool.execute("DELETE FROM site_spend WHERE site_id LIKE $1", f"{RUN}-%")


def call(site_id: str, usd: str, *, request_id: str | None = None, provider: str = "openai", model: str = "gpt-4o-mini",
         call_id: str | None = None) -> CallCost:
    return CallCost(request_id=request_id or uid("req"), site_id=site_id, provider=provider,
                    call_id=call_id or f"chatcmpl-{uuid.uuid4().hex}", model=model,
                    cost_usd=None if usd == "none" else Decimal(usd), input_tokens=100, output_tokens=200)


async def new_site(db: Database, **budgets) -> str:
    site_id = uid("site")
    await db.upsert_site(Site(site_id, wix_api_key="k"))
    if budgets:
        assert await Costs(db).set_budgets(site_id, **budgets)
    return site_id


@aio
async def test_a_call_is_recorded_once_and_added_to_the_day(db: Database) -> None:
    costs = Costs(db)
    site_id = await new_site(db)
    first = call(site_id, "0.0012")
    before = await costs.spent_today()
    recorded = await costs.record(first)
    assert recorded.inserted and recorded.exhausted is None
    assert recorded.global_day_usd >= Decimal("0.0012")
    again = await costs.record(first)  # a replay of the same provider call
    assert not again.inserted
    await costs.record(call(site_id, "0.0008", request_id=first.request_id))
    await costs.record(call(site_id, "none"))  # a model without a price: tokens kept, no money
    budget = await costs.budget(site_id)
    assert budget["spent_today_usd"] == pytest.approx(0.002) and budget["spent_this_month_usd"] == pytest.approx(0.002)
    assert await costs.spent_today() >= before + 0.002 - 1e-9
    rows = await costs.summary(by="request", site_id=site_id)
    assert {r["request"]: (r["calls"], r["usd"]) for r in rows}[first.request_id] == (2, pytest.approx(0.002))
    by_model = await costs.summary(by="model", site_id=site_id, since=now() - timedelta(hours=1))
    assert by_model == [{"model": "openai:gpt-4o-mini", "usd": pytest.approx(0.002), "calls": 3, "requests": 2,
                         "input_tokens": 300, "output_tokens": 600, "images": 0, "unpriced_calls": 1}]
    assert len(await costs.of_request(first.request_id)) == 2


@aio
async def test_reaching_a_cap_holds_the_site_and_raising_it_releases(db: Database) -> None:
    costs = Costs(db)
    site_id = await new_site(db, monthly_usd=0.01)
    assert await costs.exhausted(site_id) is None
    assert (await costs.record(call(site_id, "0.006"))).exhausted is None
    assert (await costs.record(call(site_id, "0.005"))).exhausted == "month"  # 0.011 >= 0.01
    assert await costs.exhausted(site_id) == "month"
    assert (await db.get_site(site_id)).held
    assert site_id not in await costs.refresh_budgets(None)  # still reached: stays held
    assert await costs.set_budgets(site_id, monthly_usd=0.02)  # raised: released at once
    assert await costs.exhausted(site_id) is None
    assert await costs.set_budgets(site_id, daily_usd=0.011)  # a daily cap already reached today
    assert await costs.exhausted(site_id) == "day"
    assert await costs.set_budgets(site_id, daily_usd=None)  # no cap any more
    assert await costs.exhausted(site_id) is None
    assert not await costs.set_budgets(uid("missing"), monthly_usd=1)
    with pytest.raises(ValueError, match="monthly_budget_usd"):
        await costs.set_budgets(site_id, monthly_usd=float("inf"))


@aio
async def test_a_zero_cap_holds_before_the_first_call(db: Database) -> None:
    costs = Costs(db)
    site_id = await new_site(db, monthly_usd=0)
    assert await costs.exhausted(site_id) == "month"


@aio
async def test_the_global_daily_cap_holds_every_site_until_it_is_raised(db: Database) -> None:
    costs = Costs(db)
    site_id = await new_site(db)
    recorded = await costs.record(call(site_id, "0.001"))
    cap = float(recorded.global_day_usd)  # reached exactly now
    assert await costs.hold_all() >= 1
    assert await costs.exhausted(site_id) == "global_day"
    assert site_id not in await costs.refresh_budgets(cap)  # still reached: stays held
    changed = await costs.refresh_budgets(cap * 2 + 1)  # a higher cap releases every site it held
    assert changed[site_id] is None and await costs.exhausted(site_id) is None


@aio
async def test_a_held_site_is_parked_like_a_paused_one_and_released_with_its_cap(db: Database) -> None:
    costs, parked = Costs(db), ParkedEvents(db)
    site_id = await new_site(db, monthly_usd=0)
    event = ParkedEvent(site_id=site_id, stage="generate", request_id=uid("req"), topic=f"{site_id}.t", partition=0,
                        offset=1, key=site_id.encode(), value=b"v")
    assert await parked.park([event]) == {site_id}
    assert site_id not in await parked.due()
    await costs.set_budgets(site_id, monthly_usd=5)
    assert site_id in await parked.due()
    sent: list[ParkedEvent] = []

    async def send(events: list[ParkedEvent]) -> None:
        sent.extend(events)

    assert await parked.release(site_id, send) == 1 and sent[0].request_id == event.request_id


def test_a_cap_is_a_finite_amount_in_range_or_none():
    assert budget_problem(None) is None and budget_problem(0) is None and budget_problem(12.5) is None
    for bad in (-1, float("nan"), True, "10", 2e9):
        assert budget_problem(bad) is not None


@aio
async def test_the_next_period_releases_a_site_held_by_last_months_spend(db: Database) -> None:
    costs = Costs(db)
    site_id = await new_site(db, monthly_usd=1, daily_usd=1)
    # Spent past both caps on the last day of the previous month, and held then.
    await db.pool.execute(
        "INSERT INTO site_spend (site_id, day, usd) VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date - 1, 5)",
        site_id)
    await db.pool.execute("UPDATE sites SET budget_exhausted = 'month' WHERE site_id = $1", site_id)
    assert (await costs.refresh_budgets(None))[site_id] is None  # a new month (and day): free again
    assert await costs.exhausted(site_id) is None
    assert (await costs.budget(site_id))["spent_this_month_usd"] == 0


@aio
async def test_costs_recorded_together_say_what_each_would_alone_and_add_up_the_same(db: Database) -> None:
    """record() shares one statement between costs of the same moment (record_many): a call listed twice is
    inserted once, the sums per site and day are those of one at a time, and a cap reached is told once."""
    import random

    rng = random.Random(7)
    costs = Costs(db)

    async def scenario() -> tuple[list[str], list[CallCost]]:
        sites = [await new_site(db, monthly_usd=0.01), await new_site(db, daily_usd=0.004), await new_site(db)]
        calls: list[CallCost] = []
        for n in range(40):
            site_id = sites[rng.randrange(3)]
            if calls and rng.random() < 0.2:  # the same provider call again (a replay)
                calls.append(rng.choice(calls))
            else:
                calls.append(call(site_id, rng.choice(["0.0005", "0.001", "0.002", "none"]), call_id=f"c{n}-{uid('x')}"))
        return sites, calls

    alone_sites, alone_calls = await scenario()
    alone = [await costs.record(c) for c in alone_calls]
    rng.seed(7)
    together_sites, together_calls = await scenario()
    together = await costs.record_many(together_calls)

    assert [r.inserted for r in together] == [r.inserted for r in alone]
    for a, t in zip(alone_sites, together_sites):
        assert (await costs.budget(t))["spent_today_usd"] == pytest.approx((await costs.budget(a))["spent_today_usd"])
        assert await costs.exhausted(t) == await costs.exhausted(a)
    held_alone = {alone_sites.index(c.site_id) for c, r in zip(alone_calls, alone) if r.exhausted}
    held_together = [together_sites.index(c.site_id) for c, r in zip(together_calls, together) if r.exhausted]
    assert sorted(held_together) == sorted(held_alone)  # each held site told once, by one of its costs
    # Concurrent record() calls share statements and still answer each its own.
    site_id = await new_site(db)
    batch = [call(site_id, "0.001") for _ in range(30)]
    statements = costs._batch.batches
    results = await asyncio.gather(*(costs.record(c) for c in batch + batch[:5]))
    assert [r.inserted for r in results] == [True] * 30 + [False] * 5
    assert costs._batch.batches - statements < 35
    assert (await costs.budget(site_id))["spent_today_usd"] == pytest.approx(0.03)


async def batched_line(db: Database, site_id: str, max_usd: str) -> str:
    """A bulk line of the site in a running batch, whose worst case is `max_usd` (billed when the batch ends)."""
    request_id = uid("bulk")
    await db.pool.execute(
        "INSERT INTO openai_batch_lines (request_id, site_id, model, request, prompt_tokens, bytes, state, batch_key, "
        "max_usd) VALUES ($1, $2, 'gpt-4o-mini', '{}'::jsonb, 10, 10, 'batched', $3, $4)",
        request_id, site_id, uid("bs"), Decimal(max_usd))
    return request_id


@aio
async def test_what_running_batches_may_still_cost_counts_as_spent_for_the_caps(db: Database) -> None:
    # A site's bulk lines in a running batch are billed when it ends, hours later. Real-time calls meanwhile
    # must stop where that leaves the site at its cap, or the batch's bill lands on top of a cap already reached.
    costs = Costs(db)
    site_id = await new_site(db, monthly_usd=0.01)
    try:
        line = await batched_line(db, site_id, "0.004")
        assert (await costs.budget(site_id))["reserved_usd"] == pytest.approx(0.004)
        assert (await costs.record(call(site_id, "0.005"))).exhausted is None  # 0.005 + 0.004 reserved < 0.01
        assert (await costs.record(call(site_id, "0.002"))).exhausted == "month"  # 0.007 + 0.004 >= 0.01
        assert await costs.exhausted(site_id) == "month"
        assert site_id not in await costs.refresh_budgets(None)  # still reserved: stays held
        # The batch ends: its line's own cost replaces its worst case (not counted twice), the line settles.
        await costs.record(call(site_id, "0.001", request_id=line))
        await db.pool.execute("UPDATE openai_batch_lines SET state = 'written' WHERE request_id = $1", line)
        assert (await costs.refresh_budgets(None))[site_id] is None  # 0.008 < 0.01: free again
    finally:
        await db.pool.execute("DELETE FROM openai_batch_lines WHERE site_id = $1", site_id)


@aio
async def test_a_batch_lines_own_cost_is_not_counted_twice_with_its_reservation(db: Database) -> None:
    costs = Costs(db)
    site_id = await new_site(db, monthly_usd=0.01)
    try:
        lines = [await batched_line(db, site_id, "0.004") for _ in range(2)]
        await costs.record(call(site_id, "0.001"))
        # The batch ends; each line's cost is recorded while the line still counts as batched, then it settles:
        assert (await costs.record(call(site_id, "0.003", request_id=lines[0]))).exhausted is None  # 0.004 + 0.004
        await db.pool.execute("UPDATE openai_batch_lines SET state = 'written' WHERE request_id = $1", lines[0])
        assert (await costs.record(call(site_id, "0.003", request_id=lines[1]))).exhausted is None  # 0.007
        assert await costs.exhausted(site_id) is None
    finally:
        await db.pool.execute("DELETE FROM openai_batch_lines WHERE site_id = $1", site_id)
