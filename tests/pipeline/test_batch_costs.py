"""What the bulk lane's batches cost is recorded once, also when OpenAI no longer has their results file.

Against the OpenAI simulator (its batches bill their lines' usage: `usage_by_model[model]["batch"]`) and the
real test database; fixtures and helpers from test_batch_lane.py.
"""
from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from store.costs import Costs
from store.database import Database
from streams.costs.prices import PriceTable, TokenPrice
from streams.pipeline import spend

from .test_batch_lane import (  # noqa: F401  (fixtures)
    BASE, RUN, SentBack, client, db, hold_all, lane, passes_until, requests, settled, sim, use_settings,
)

SITE = f"{RUN}-site"

PRICE = TokenPrice(input=Decimal("0.15"), output=Decimal("0.60"), batch_input=Decimal("0.075"),
                   batch_output=Decimal("0.30"))


@pytest.fixture
async def priced(monkeypatch, lane, db):
    """The test's model has a price (the lane's model name is the test's own)."""
    table = PriceTable({lane: PRICE}, {}, "test")
    monkeypatch.setattr(spend, "load_prices", lambda path="": table)
    yield lane
    await db.pool.execute("DELETE FROM request_costs WHERE request_id LIKE $1", f"{RUN}-%")
    await db.pool.execute("DELETE FROM site_spend WHERE site_id = $1", SITE)


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
