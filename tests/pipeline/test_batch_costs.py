"""What the bulk lane's batches cost is recorded once, also when OpenAI no longer has their results file.

Against the OpenAI simulator (its batches bill their lines' usage: `usage_by_model[model]["batch"]`) and the
real test database; fixtures and helpers from test_batch_lane.py.
"""
from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.costs import Costs
from store.database import Database
from streams.costs.prices import PriceTable, TokenPrice
from streams.pipeline import batch_collect, spend

from . import test_batch_lane as lane_tests
from .test_batch_lane import RUN, SentBack, hold_all, passes_until, requests, settled, use_settings

BASE = lane_tests.BASE  # the simulators' settings (tests/pipeline/conftest.py, sim_server)
sim, db, lane, client = lane_tests.sim, lane_tests.db, lane_tests.lane, lane_tests.client  # the lane's fixtures

SITE = f"{RUN}-site"

PRICE = TokenPrice(input=Decimal("0.15"), output=Decimal("0.60"), batch_input=Decimal("0.075"),
                   batch_output=Decimal("0.30"))


@pytest.fixture
async def priced(monkeypatch, lane, db):
    """The test's model has a price (the lane's model name is the test's own)."""
    table = PriceTable({lane: PRICE}, {}, "test")
    for module in (spend, batch_collect):
        monkeypatch.setattr(module, "load_prices", lambda path="": table)
    yield lane
    await db.pool.execute("DELETE FROM request_costs WHERE request_id LIKE $1", f"{RUN}-%")
    await db.pool.execute("DELETE FROM site_spend WHERE site_id = $1", SITE)
    await db.pool.execute("DELETE FROM sites WHERE site_id = $1", SITE)


def paying_worker(db: Database, name: str = "w-a") -> SimpleNamespace:
    return SimpleNamespace(db=db, worker_id=name, costs=Costs(db), hold_here=lambda site_id: None)


async def batch_rows(db: Database, batch: list[dict[str, Any]]) -> list[Any]:
    return await db.pool.fetch("SELECT * FROM request_costs WHERE request_id = ANY($1::text[]) AND lane = 'batch'",
                               [r["request_id"] for r in batch])


def billed(sim: Any, model: str) -> tuple[int, int, Decimal]:
    usage = sim.ledger()["openai"]["usage_by_model"][model]["batch"]
    cost = PRICE.cost(usage["prompt_tokens"], usage["completion_tokens"], lane="batch")
    return usage["prompt_tokens"], usage["completion_tokens"], cost


async def test_a_batch_whose_results_file_is_gone_still_records_what_openai_billed(sim, db, priced, client,
                                                                                   monkeypatch):
    # OpenAI deletes a batch's output file after 30 days (a lane switched off for a month finds it gone). The
    # lines ran and were billed; the batch object still says its usage. That usage is recorded, split over
    # the batch's lines, so the sites' spend and their caps count it.
    use_settings(monkeypatch, openai_batch_max_attempts=2)
    sim.configure({"openai": {"batch": {"output_file_ttl_seconds": 0.0}}})  # every batch's files are gone at once
    batch, sent, w = requests(3, site=SITE), SentBack(), paying_worker(db)
    await hold_all(w, batch)
    await passes_until(w, client, sent, settled(db, batch, "realtime"))  # two batches, both without results
    prompt, completion, cost = billed(sim, priced)
    assert prompt > 0 and completion > 0
    rows = await batch_rows(db, batch)
    assert len(rows) == 2 * len(batch)  # one share per line and batch
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(cost, abs=Decimal("1e-9"))
    assert abs(sum(r["input_tokens"] for r in rows) - prompt) <= len(rows)  # whole tokens per line
    assert abs(sum(r["output_tokens"] for r in rows) - completion) <= len(rows)
    assert {r["site_id"] for r in rows} == {SITE}


async def test_a_worker_that_stops_while_it_settles_such_a_batch_records_nothing_twice(sim, db, priced, client,
                                                                                       monkeypatch):
    use_settings(monkeypatch, openai_batch_max_attempts=1)  # one batch, then the real-time lane
    sim.configure({"openai": {"batch": {"output_file_ttl_seconds": 0.0}}})
    batch, sent, w = requests(3, site=SITE), SentBack(), paying_worker(db)
    await hold_all(w, batch)
    real_settle = db.settle_line
    stops = {"left": 1}

    async def stop_once(*args: Any, **kwargs: Any) -> bool:
        if stops["left"]:
            stops["left"] -= 1
            raise ConnectionError("the worker stops here")
        return await real_settle(*args, **kwargs)

    monkeypatch.setattr(db, "settle_line", stop_once)

    async def stopped_or_settled() -> bool:
        if not stops["left"]:  # the claim of the worker that stopped runs out
            await db.pool.execute("UPDATE openai_batches SET claimed_until = now() - interval '1 second' "
                                  "WHERE model = $1 AND state <> 'ended'", priced)
        return await settled(db, batch, "realtime")()

    async def one_pass_at_a_time() -> bool:
        try:
            return await stopped_or_settled()
        except ConnectionError:
            return False

    await passes_until_stopping(w, client, sent, one_pass_at_a_time)
    assert stops["left"] == 0
    _, _, cost = billed(sim, priced)
    rows = await batch_rows(db, batch)
    assert len(rows) == len(batch) and sum(r["cost_usd"] for r in rows) == pytest.approx(cost, abs=Decimal("1e-9"))


async def passes_until_stopping(w: Any, client: Any, sent: SentBack, done: Any) -> None:
    """passes_until, where a pass may stop with the worker (ConnectionError): the next pass goes on."""
    from streams.pipeline import batch_poll

    async def run_once(worker: Any, batch_client: Any, send: Any = None) -> None:
        try:
            await real_run_once(worker, batch_client, send=send)
        except ConnectionError:
            pass

    real_run_once = batch_poll.run_once
    batch_poll.run_once = run_once
    try:
        await passes_until(w, client, sent, done)
    finally:
        batch_poll.run_once = real_run_once


# --------------------------------------------------------------------------- spend caps and the bulk lane


def worst_case(request: dict[str, Any]) -> Decimal:
    """What one line may cost at most: its prompt estimate and its max_tokens, at batch prices."""
    from connectors.openai_batches import prompt_tokens
    from connectors.openai_writer import max_tokens_for
    from streams.settings import settings

    return PRICE.cost(prompt_tokens(request), max_tokens_for(request, settings.openai_max_tokens), lane="batch")


async def test_a_capped_sites_bulk_lines_go_into_batches_only_within_what_it_has_left(sim, db, priced, client):
    # Before, every queued line of a site no cap held yet went into the next file: a site with a cap of a few
    # articles and a backfill of a dozen was billed for all of them when the batch ended (unbounded: a file
    # holds up to 50,000 lines). Lines now go in only while their worst case fits in what the site has left
    # (less the worst case of its lines in running batches), so the site stops within one line of its cap;
    # the lines left wait queued for a higher cap or the next period, nothing is lost.
    from store.sites import Site

    await db.upsert_site(Site(SITE, wix_api_key="k"))
    costs = Costs(db)
    batch, sent, w = requests(12, site=SITE), SentBack(), paying_worker(db)
    line_max = max(worst_case(r) for r in batch)
    cap = 2.5 * float(line_max)
    await costs.set_budgets(SITE, monthly_usd=cap)
    await hold_all(w, batch)

    async def capped_and_quiet() -> bool:
        await costs.refresh_budgets(None, [SITE])  # what every worker's site refresh does every two seconds
        running = await db.pool.fetchval("SELECT count(*) FROM openai_batch_lines WHERE request_id = ANY($1::text[]) "
                                         "AND state = 'batched'", [r["request_id"] for r in batch])
        return running == 0 and await costs.exhausted(SITE) == "month"

    await passes_until(w, client, sent, capped_and_quiet)
    budget = await costs.budget(SITE)
    spent, cap_kept = (Decimal(str(budget[k])) for k in ("spent_this_month_usd", "monthly_budget_usd"))
    assert cap_kept <= spent <= cap_kept + line_max
    lines = {r["state"]: r["n"] for r in await db.pool.fetch(
        "SELECT state, count(*) AS n FROM openai_batch_lines WHERE request_id = ANY($1::text[]) GROUP BY state",
        [r["request_id"] for r in batch])}
    assert lines.get("queued", 0) > 0 and lines.get("written", 0) + lines["queued"] == len(batch)


async def test_with_a_global_daily_cap_bulk_lines_go_into_batches_only_within_what_all_sites_have_left(
        sim, db, priced, client, monkeypatch):
    # The same for all sites together: before, a file took every queued line however little of the global
    # daily cap was left. Once running batches reserve the rest of it, every site waits (global_day).
    from store.sites import Site

    await db.upsert_site(Site(SITE, wix_api_key="k"))  # no cap of its own
    costs = Costs(db)
    batch, sent, w = requests(12, site=SITE), SentBack(), paying_worker(db)
    line_max = max(worst_case(r) for r in batch)
    used_before = await db.pool.fetchval(  # all sites' spend today, and what running batches may still cost
        "SELECT coalesce((SELECT usd FROM daily_spend WHERE day = (now() AT TIME ZONE 'UTC')::date), 0) "
        "+ coalesce((SELECT sum(max_usd) FROM openai_batch_lines WHERE state = 'batched'), 0)")
    cap = used_before + Decimal("2.5") * line_max
    use_settings(monkeypatch, global_daily_budget_usd=float(cap))
    await hold_all(w, batch)

    async def held_and_quiet() -> bool:
        await costs.refresh_budgets(float(cap), [SITE])  # what every worker's site refresh does
        running = await db.pool.fetchval("SELECT count(*) FROM openai_batch_lines WHERE request_id = ANY($1::text[]) "
                                         "AND state = 'batched'", [r["request_id"] for r in batch])
        return running == 0 and await costs.exhausted(SITE) == "global_day"

    try:
        await passes_until(w, client, sent, held_and_quiet)
        spent = Decimal(str((await costs.budget(SITE))["spent_today_usd"]))
        assert cap - used_before <= spent <= cap - used_before + line_max
    finally:
        await costs.refresh_budgets(None)  # no global cap any more: every site it held is free again


@given(usage=st.tuples(st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**8)),
       prompts=st.lists(st.integers(0, 10**5), min_size=1, max_size=60))
def test_a_batchs_usage_split_over_its_lines_adds_up_to_what_the_batch_cost(usage, prompts) -> None:
    """Whatever the batch's usage and its lines' prompts, the shares cost the batch's price of its usage
    (to the database's ten decimals a row), and each row has whole token counts that add up within one a line."""
    import asyncio
    from datetime import datetime, timezone

    from connectors.openai_batches import BatchInfo, BatchUsage
    from store.batches import BatchRow, HeldLine
    from streams.pipeline import batch_poll

    input_tokens, output_tokens, cached = usage[0], usage[1], min(usage[2], usage[0])
    row = BatchRow("bs-1", "m", "submitted", len(prompts), sum(prompts), "batch_1", datetime.now(timezone.utc))
    info = BatchInfo("batch_1", "completed", usage=BatchUsage(input_tokens, output_tokens, cached))
    recorded = []

    async def record(deps, cost):
        recorded.append(cost)

    table = PriceTable({"m": PRICE}, {}, "test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spend, "load_prices", lambda path="": table)
        patch.setattr(spend, "_record", record)
        share = batch_poll._usage_shares(row, info)
        lines = [HeldLine(f"r{n}", "s", {}, 0, p) for n, p in enumerate(prompts)]
        if share is not None:
            asyncio.run(_each(share, lines))
    if not (input_tokens or output_tokens):
        assert recorded == []
        return
    assert len({c.call_id for c in recorded}) == len(lines)
    total = PRICE.cost(input_tokens, output_tokens, lane="batch", cached_tokens=cached)
    assert abs(sum(c.cost_usd.quantize(Decimal("1e-10")) for c in recorded) - total) <= len(lines) * Decimal("1e-10")
    for name, want in (("input_tokens", input_tokens), ("output_tokens", output_tokens), ("cached_tokens", cached)):
        assert abs(sum(getattr(c, name) for c in recorded) - want) <= len(lines)


async def _each(share, lines) -> None:
    for line in lines:
        await share(None, line)
