"""The spend-cap gauges (streams/pipeline/spend.py, publish_gauges) against the real test database: what they
count, and that they say how old they are when they cannot be read."""
from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from store.costs import Costs
from store.sites import Site
from streams import metrics
from streams.pipeline import spend
from tests.store.conftest import reachable_database

RUN = f"gaugetest{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def db():
    async with reachable_database() as database:
        yield database
        await database.pool.execute("DELETE FROM sites WHERE site_id LIKE $1", f"{RUN}-%")


def held(cap: str) -> float | None:
    return metrics.registry.get_sample_value("blogstream_sites_budget_exhausted", {"cap": cap})


async def test_sites_held_by_the_global_daily_cap_are_counted_with_or_without_caps_of_their_own(db):
    # The global daily cap holds every site, most of which have no cap of their own: the gauge (and the alert
    # BlogstreamSitesBudgetExhausted on it) must count them all, not only the capped ones.
    plain, capped = f"{RUN}-plain", f"{RUN}-capped"
    await db.upsert_site(Site(plain, wix_api_key="k"))
    await db.upsert_site(Site(capped, wix_api_key="k"))
    costs = Costs(db)
    await costs.set_budgets(capped, monthly_usd=100)
    await db.pool.execute("UPDATE sites SET budget_exhausted = 'global_day' WHERE site_id = ANY($1::text[])",
                          [plain, capped])
    await spend.publish_gauges(costs)
    expected = await db.pool.fetchval("SELECT count(*) FROM sites WHERE budget_exhausted = 'global_day'")
    assert expected >= 2 and held("global_day") == expected


class Unreadable(Costs):
    async def budgets(self):
        raise ConnectionError("Postgres away")


async def test_the_spend_gauges_say_when_they_were_last_read(db, monkeypatch):
    # They keep their last value while Postgres cannot be read; like the other global gauges, their age is in
    # blogstream_figures_last_success_timestamp_seconds{source="spend"} (alert BlogstreamFiguresStale).
    def read_at() -> float | None:
        return metrics.registry.get_sample_value("blogstream_figures_last_success_timestamp_seconds",
                                                 {"source": "spend"})

    assert "spend" in metrics.FIGURE_SOURCES and read_at() is not None
    clock = [1000.0]
    monkeypatch.setattr(spend.time, "time", lambda: clock[0])
    metrics.figures_last_success.labels("spend").set(0)
    await spend.publish_gauges(Costs(db))
    assert read_at() == 1000.0
    clock[0] = 1100.0
    with pytest.raises(ConnectionError):
        await spend.publish_gauges(Unreadable(db))
    assert read_at() == 1000.0
