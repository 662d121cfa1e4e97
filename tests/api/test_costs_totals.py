"""GET /api/sites/{id}/costs and `blogstream costs`: the totals are every recorded call's, however many rows."""
from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request

from store.costs import CallCost, Costs
from store.sites import Site
from streams.api import costs as costs_api
from streams.app import app
from tests.store.conftest import reachable_database

RUN = f"coststotal{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def db(monkeypatch):
    async with reachable_database() as database:
        monkeypatch.setattr(costs_api, "deps", SimpleNamespace(ready=lambda: asyncio.sleep(0), db=database,
                                                               costs=Costs(database)))
        yield database
        for table in ("request_costs", "site_spend", "sites"):
            await database.pool.execute(f"DELETE FROM {table} WHERE site_id LIKE $1", f"{RUN}-%")


async def get(site_id: str, query: str) -> tuple[int, dict]:
    view = costs_api.SiteCosts(app, app.web)
    answer = await view.get(make_mocked_request("GET", f"/api/sites/{site_id}/costs?{query}"), site_id)
    return answer.status, json.loads(answer.body)


async def test_the_total_of_a_site_with_more_requests_than_rows_shown_counts_every_call(db):
    # A backfill of 1,500 requests in a month: by=request lists the dearest rows, but the total and
    # the calls are the site's whole spend, not the sum of the rows shown.
    site_id = f"{RUN}-site"
    await db.upsert_site(Site(site_id, wix_api_key="k"))
    calls = [CallCost(request_id=f"{RUN}-r{n}", site_id=site_id, provider="openai", call_id=f"{RUN}-c{n}",
                      model="gpt-4o-mini", cost_usd=Decimal("0.001"), input_tokens=10, output_tokens=20)
             for n in range(1500)]
    await Costs(db).record_many(calls)
    status, body = await get(site_id, "by=request&since=1d")
    assert status == 200
    assert body["calls"] == 1500 and body["total_usd"] == pytest.approx(1.5)
    assert body["spent_this_month_usd"] == pytest.approx(1.5)
    assert len(body["rows"]) < 1500 and body["rows_cut"] is True  # says the rows are not all of them
    status, body = await get(site_id, "by=day&since=1d")
    assert body["total_usd"] == pytest.approx(1.5) and body["rows_cut"] is False
