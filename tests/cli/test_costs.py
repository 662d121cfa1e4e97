"""`blogstream costs` and the spend caps of `blogstream sites set`, against the real test database."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from store.costs import CallCost, Costs

from .conftest import RUN, on_db, uid


@pytest.fixture(autouse=True, scope="module")
def _delete_costs():
    yield
    for table in ("request_costs", "site_spend"):
        on_db(lambda db, table=table: db.pool.execute(f"DELETE FROM {table} WHERE site_id LIKE $1", f"{RUN}%"))


def record(site: str, usd: str, model: str = "gpt-4o-mini", provider: str = "openai") -> None:
    cost = CallCost(request_id=uid("req"), site_id=site, provider=provider, call_id=f"call-{uuid.uuid4().hex}",
                    model=model, cost_usd=Decimal(usd), input_tokens=1000, output_tokens=2000)
    on_db(lambda db: Costs(db).record(cost))


def test_costs_sum_a_sites_calls_by_day_and_model(run):
    site = uid("site")
    run("sites", "add", site, env={"BLOGSTREAM_WIX_API_KEY": "k"})
    record(site, "0.00135")
    record(site, "0.00135")
    record(site, "0.003", model="black-forest-labs/flux-schnell", provider="replicate")
    answer = json.loads(run("costs", "--site", site, "--by", "model", "--json").stdout)
    assert answer["total_usd"] == pytest.approx(0.0057) and answer["calls"] == 3
    assert {r["model"]: r["calls"] for r in answer["rows"]} == {
        "replicate:black-forest-labs/flux-schnell": 1, "openai:gpt-4o-mini": 2}
    assert answer["budget"]["spent_this_month_usd"] == pytest.approx(0.0057)
    text = run("costs", "--site", site).stdout
    assert text.splitlines()[-2].split()[:3] == ["total", "0.0057", "3"]
    assert f"site {site}: this month 0.0057 (no cap)" in text


def test_a_cap_set_reached_shown_and_removed(run):
    site = uid("site")
    run("sites", "add", site, env={"BLOGSTREAM_WIX_API_KEY": "k"})
    assert run("sites", "set", site, "--monthly-budget", "0.002").exit_code == 0
    record(site, "0.0015")
    record(site, "0.0015")  # 0.003 >= 0.002: the cap holds the site
    listed = {s["site_id"]: s for s in json.loads(run("sites", "list", "--json").stdout)}
    assert listed[site]["monthly_budget_usd"] == 0.002 and listed[site]["budget_exhausted"] == "month"
    line = next(line for line in run("sites", "list").stdout.splitlines() if line.startswith(site))
    assert line.split()[1] == "budget_exhausted" and "(month cap reached)" in line
    assert "budget_exhausted (month cap reached)" in run("costs", "--site", site).stdout
    assert run("sites", "set", site, "--monthly-budget", "none").exit_code == 0  # no cap: released at once
    listed = {s["site_id"]: s for s in json.loads(run("sites", "list", "--json").stdout)}
    assert listed[site]["monthly_budget_usd"] is None and listed[site]["budget_exhausted"] is None


@pytest.mark.parametrize("amount", ["-1", "lots", "inf"])
def test_a_bad_amount_is_a_usage_error(run, amount):
    result = run("sites", "set", uid("site"), "--daily-budget", amount)
    assert result.exit_code == 2 and "--daily-budget" in result.stderr


def test_costs_of_an_unknown_site_is_one_line(run):
    site = uid("ghost")
    result = run("costs", "--site", site)
    assert result.exit_code == 1 and result.stderr.startswith(f"blogstream: error: site {site} is not registered")


def test_the_total_counts_every_call_when_there_are_more_sites_than_rows_shown(run):
    # Thousands of sites: `costs --by site` lists the dearest 1,000, and its total is still every site's spend.
    calls = [CallCost(request_id=uid("req"), site_id=uid("many"), provider="openai", call_id=f"call-{uuid.uuid4().hex}",
                      model="gpt-4o-mini", cost_usd=Decimal("0.001"), input_tokens=1, output_tokens=1)
             for _ in range(1200)]
    on_db(lambda db: Costs(db).record_many(calls))
    answer = json.loads(run("costs", "--by", "site", "--since", "1d", "--json").stdout)
    everything = on_db(lambda db: db.pool.fetchrow(
        "SELECT count(*) AS calls, sum(cost_usd) AS usd FROM request_costs WHERE recorded_at >= now() - interval '1 day'"))
    assert answer["calls"] == everything["calls"] >= 1200
    assert answer["total_usd"] == pytest.approx(float(everything["usd"]))
    assert len(answer["rows"]) == 1000 and answer["rows_cut"] is True
    text = run("costs", "--by", "site", "--since", "1d").stdout
    assert text.splitlines()[-1].split()[:3] == ["total", f"{float(everything['usd']):.4f}", str(everything["calls"])]
    assert "the dearest 1000 of more sites shown" in text
