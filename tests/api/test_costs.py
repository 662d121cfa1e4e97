"""The spend caps over HTTP: the intake's 429 budget_exhausted, the caps in PATCH /api/sites/{id}."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from store.sites import Site
from streams.api.admission import budget_rejection, seconds_to_next_period
from streams.api.sites import parse_controls


def test_a_site_a_cap_holds_is_refused_with_429_budget_exhausted():
    sites = {"free": Site("free"), "capped": Site("capped", monthly_budget_usd=5.0, budget_exhausted="month")}
    refusal = budget_rejection(sites)
    assert refusal is not None and refusal.status == 429
    body = refusal.body()
    assert body["code"] == "budget_exhausted" and body["reason"] == "budget_exhausted"
    assert body["site_id"] == "capped" and body["cap"] == "month"
    assert "blogstream sites set capped" in body["error"]
    assert int(refusal.headers["Retry-After"]) == body["retry_after"] >= 1
    assert budget_rejection({"free": Site("free")}) is None


@pytest.mark.parametrize("cap, now, seconds", [
    ("day", datetime(2026, 12, 4, 23, 0, tzinfo=timezone.utc), 3600),
    ("global_day", datetime(2026, 12, 4, 0, 0, 1, tzinfo=timezone.utc), 86_399),
    ("month", datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc), 1800),
    ("month", datetime(2026, 2, 27, 0, 0, tzinfo=timezone.utc), 2 * 86_400),
])
def test_retry_after_is_the_end_of_the_period(cap, now, seconds):
    assert seconds_to_next_period(cap, now) == seconds


def test_caps_in_a_patch_body_are_amounts_or_null():
    controls, errors = parse_controls({"monthly_budget_usd": 50, "daily_budget_usd": None})
    assert errors == [] and controls == {"monthly_budget_usd": 50.0, "daily_budget_usd": None}
    controls, errors = parse_controls({"monthly_budget_usd": -1, "daily_budget_usd": "5"})
    assert len(errors) == 2 and all("US dollars" in e for e in errors)
    _, errors = parse_controls({"budget": 5})
    assert errors and "monthly_budget_usd" in errors[0]


# What a site at its cap is told to do must be what releases it: a daily hold is not released by a
# higher monthly cap, and a hold by the global daily cap by none of the site's own caps.
RELEASED_BY = {"month": "--monthly-budget", "day": "--daily-budget", "global_day": "BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD"}


@pytest.mark.parametrize("cap", sorted(RELEASED_BY))
def test_a_held_site_is_told_the_one_cap_that_releases_it(cap):
    from streams.cli.costs import _budget_line

    site = Site("shop-9", monthly_budget_usd=5.0, daily_budget_usd=1.0, budget_exhausted=cap)
    told = [budget_rejection({"shop-9": site}).body()["error"],
            _budget_line("shop-9", {"monthly_budget_usd": 5.0, "daily_budget_usd": 1.0, "spent_this_month_usd": 5.0,
                                    "spent_today_usd": 1.0, "budget_exhausted": cap})]
    for text in told:
        assert RELEASED_BY[cap] in text, text
        for other in set(RELEASED_BY.values()) - {RELEASED_BY[cap]}:
            assert other not in text, text
