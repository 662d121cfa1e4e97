"""Spend caps and the bulk lane (store/batches.py, assemble_batch; store/costs.py), as a property: whatever
the caps, the lines' worst cases and what the lines really cost, a capped site's batches take it at most one
line's worst case past its cap, and a site whose lines wait is held (told budget_exhausted), never silently."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.costs import CallCost, Costs
from store.database import Database
from tests.store.conftest import RUN, database_on_own_loop, uid

UNIT = Decimal("0.0001")  # caps are kept to four decimals (migration 0006)


@pytest.fixture(scope="module")
def pg() -> Any:
    with database_on_own_loop(max_size=4) as (loop, database):
        yield loop, database
        for table, column in (("openai_batch_lines", "site_id"), ("openai_batches", "model"),
                              ("request_costs", "site_id"), ("site_spend", "site_id"), ("sites", "site_id")):
            loop.run_until_complete(database.pool.execute(f"DELETE FROM {table} WHERE {column} LIKE $1", f"{RUN}-%"))


# A site: its monthly cap in units (None: no cap) and its lines, each (worst case in units, % of it billed).
SITES = st.lists(st.tuples(
    st.one_of(st.none(), st.integers(0, 40)),
    st.lists(st.tuples(st.integers(1, 10), st.integers(0, 100)), min_size=1, max_size=12),
), min_size=1, max_size=3)


async def run_lane(db: Database, sites: list[tuple[int | None, list[tuple[int, int]]]]) -> list[dict[str, Any]]:
    """Hold every line, then send batches and end them (each line billed its share) until nothing moves."""
    costs, model = Costs(db), uid("model")
    names, billed = [], {}
    for cap, lines in sites:
        site_id = uid("site")
        names.append(site_id)
        await db.pool.execute("INSERT INTO sites (site_id, name, wix_api_key) VALUES ($1, $1, 'k')", site_id)
        if cap is not None:
            await costs.set_budgets(site_id, monthly_usd=float(cap * UNIT))
        for worst, share in lines:
            request_id = uid("bulk")
            billed[request_id] = worst * UNIT * share / 100
            await db.hold_batch_line({"request_id": request_id, "site_id": site_id}, model=model, prompt_tokens=1,
                                     size=10, max_usd=worst * UNIT)
    for _ in range(500):
        row = await db.assemble_batch(uid("batch"), model, max_lines=5, max_bytes=10**6, max_enqueued_tokens=10**6,
                                      collect_seconds=0.0, owner="w1", lease_seconds=60)
        if row is None:
            break
        for line in await db.batched_lines(row.batch_key):  # the batch ends: each line billed, then settled
            await costs.record(CallCost(line.request_id, line.site_id, "openai", uid("call"), model,
                                        billed[line.request_id], lane="batch"))
            assert await db.settle_line(line.request_id, row.batch_key, "written")
        await costs.refresh_budgets(None, names)  # what every worker's site refresh does
    else:
        raise AssertionError("the lane never settled")
    out = []
    for site_id, (cap, lines) in zip(names, sites):
        states = {r["state"]: r["n"] for r in await db.pool.fetch(
            "SELECT state, count(*) AS n FROM openai_batch_lines WHERE site_id = $1 GROUP BY state", site_id)}
        out.append({"cap": None if cap is None else cap * UNIT, "worst": max(w for w, _ in lines) * UNIT,
                    "budget": await costs.budget(site_id), "states": states, "lines": len(lines)})
    return out


@settings(database=None, deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.function_scoped_fixture])
@given(sites=SITES)
def test_a_capped_sites_batches_stop_within_one_line_of_its_cap_and_its_waiting_lines_say_why(pg: Any, sites) -> None:
    loop, db = pg
    for site in loop.run_until_complete(run_lane(db, sites)):
        spent = Decimal(str(site["budget"]["spent_this_month_usd"]))
        queued = site["states"].get("queued", 0)
        assert site["states"].get("written", 0) + queued == site["lines"]
        assert site["budget"]["reserved_usd"] == 0  # every batch ended
        if site["cap"] is None:
            assert queued == 0  # no cap: every line went
            continue
        assert spent <= site["cap"] + site["worst"]
        if queued:  # lines wait only for a cap reached, and the site says so
            assert spent >= site["cap"] and site["budget"]["budget_exhausted"] == "month"
