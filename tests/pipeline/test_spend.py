"""streams/pipeline/spend.py: the cap checked before each paid call, the cost recorded after it (even unusable)."""
from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace

import asyncpg
import pytest

from connectors.errors import MalformedOutput
from connectors.openai_writer import BilledCall
from connectors.replicate_images import PredictionState
from store.costs import CallCost, Recorded
from streams import metrics
from streams.pipeline import spend
from streams.pipeline.pending_costs import PendingCosts
from streams.pipeline.runner import SiteHeld

from .test_parking import start
from .test_runner import run, settle, wait_until  # noqa: F401  (run: the fixture)

pytestmark = pytest.mark.asyncio


class FakeCosts:
    def __init__(self, exhausted: str | None = None) -> None:
        self.held = exhausted
        self.recorded: dict[tuple[str, str], object] = {}
        self.exhaust_at: Decimal | None = None

    async def exhausted(self, site_id):
        return self.held

    async def hold_all(self, reason="global_day"):
        self.held = self.held or reason
        self.held_all = True
        return 1

    async def record(self, cost):
        key = (cost.provider, cost.call_id)
        if key in self.recorded:
            return Recorded(False, None, Decimal(0))
        self.recorded[key] = cost
        spent = sum((c.cost_usd or 0) for c in self.recorded.values())
        reached = self.exhaust_at is not None and spent >= self.exhaust_at
        if reached:
            self.held = "month"
        return Recorded(True, "month" if reached else None, spent)


class FakeDeps:
    def __init__(self, costs: FakeCosts) -> None:
        self.costs = costs
        self.held: list[str] = []

    def hold_here(self, site_id):
        self.held.append(site_id)

    async def site(self, site_id):
        return None  # not in the cache: the check asks Postgres


def billed(call_id="chatcmpl-1", prompt=1000, completion=2000):
    return BilledCall(call_id=call_id, model="gpt-4o-mini", prompt_tokens=prompt, completion_tokens=completion)


async def test_an_answered_call_is_recorded_at_the_table_price_once():
    deps = FakeDeps(FakeCosts())
    result = SimpleNamespace(billed=billed())

    async def call():
        return result

    assert await spend.paid_article(deps, "r1", "s1", call) is result
    await spend.paid_article(deps, "r1", "s1", call)  # the same completion again: one record
    (cost,) = deps.costs.recorded.values()
    assert cost.cost_usd == Decimal("0.00135") and (cost.input_tokens, cost.output_tokens) == (1000, 2000)
    assert (cost.request_id, cost.site_id, cost.provider) == ("r1", "s1", "openai")


async def test_a_billed_but_unusable_answer_is_recorded_and_the_error_goes_on():
    deps = FakeDeps(FakeCosts())

    async def call():
        exc = MalformedOutput("openai", "the article was cut off at max_tokens=5")
        exc.billed = billed("chatcmpl-cut", completion=5)
        raise exc

    with pytest.raises(MalformedOutput):
        await spend.paid_article(deps, "r1", "s1", call)
    assert deps.costs.recorded[("openai", "chatcmpl-cut")].output_tokens == 5


async def test_a_held_site_starts_no_call_gives_its_slot_back_and_is_held_here(monkeypatch):
    deps = FakeDeps(FakeCosts(exhausted="day"))
    released = []

    async def release_slot(site_id, request_id):
        released.append((site_id, request_id))

    monkeypatch.setattr(spend.budgets, "release_slot", release_slot)
    called = []

    async def call():
        called.append(1)

    with pytest.raises(SiteHeld, match="budget_exhausted"):
        await spend.paid_article(deps, "r1", "s1", call)
    assert called == [] and released == [("s1", "r1")] and deps.held == ["s1"]
    # A retry's run holds a slot of its own (stage.slot_key): that is the one it gives back.
    with pytest.raises(SiteHeld):
        await spend.paid_article(deps, "r1", "s1", call, slot="r1#2")
    assert released[-1] == ("s1", "r1#2")


async def test_the_call_that_reaches_the_cap_holds_the_site():
    costs = FakeCosts()
    costs.exhaust_at = Decimal("0.002")
    deps = FakeDeps(costs)
    for n in range(2):
        result = SimpleNamespace(billed=billed(f"chatcmpl-{n}"))
        await spend.paid_article(deps, f"r{n}", "s1", lambda result=result: asyncio.sleep(0, result))
    assert deps.held == ["s1"]


async def test_reaching_the_global_daily_cap_holds_every_site(monkeypatch):
    costs = FakeCosts()
    deps = FakeDeps(costs)
    monkeypatch.setattr(spend, "_global_cap", lambda: 0.002)

    async def release_slot(site_id, request_id):
        pass

    monkeypatch.setattr(spend.budgets, "release_slot", release_slot)
    await spend.paid_article(deps, "r1", "s1", lambda: asyncio.sleep(0, SimpleNamespace(billed=billed("c-1"))))
    assert not getattr(costs, "held_all", False)  # 0.00135 of 0.002
    await spend.paid_article(deps, "r2", "s2", lambda: asyncio.sleep(0, SimpleNamespace(billed=billed("c-2"))))
    assert costs.held_all and costs.held == "global_day"
    with pytest.raises(SiteHeld):
        await spend.paid_article(deps, "r3", "s3", lambda: asyncio.sleep(0, SimpleNamespace(billed=billed("c-3"))))


async def test_a_prediction_costs_its_images_once_it_ended():
    deps = FakeDeps(FakeCosts())
    await spend.record_prediction(deps, "r1", "s1", PredictionState("p-run", "processing"))
    await spend.record_prediction(deps, "r1", "s1", PredictionState("p-ok", "succeeded", url="http://x/1.png"))
    await spend.record_prediction(deps, "r1", "s1", PredictionState("p-bad", "failed", error="nsfw"))
    got = {call_id: (c.images, c.cost_usd) for (_, call_id), c in deps.costs.recorded.items()}
    assert got == {"p-ok": (1, Decimal("0.003")), "p-bad": (0, Decimal("0"))}


async def test_without_a_cost_store_nothing_is_checked_or_recorded():
    result = SimpleNamespace(billed=billed())
    assert await spend.paid_article(SimpleNamespace(), "r1", "s1", lambda: asyncio.sleep(0, result)) is result


async def test_the_runner_parks_an_event_whose_site_a_cap_held_after_it_started(run):
    t = start(run, set())  # nothing held when the events arrive
    t.lot.paused_in_db.add("capped")

    async def handler(ev):
        if ev.key == b"capped":  # what check_budget does: hold the site here, then raise
            t.paused.add("capped")
            raise SiteHeld("capped", "budget_exhausted (month cap)")
        await t.handler(ev)

    t.runner.handle = handler
    for n in range(3):
        t.source.append(0, "capped", f"capped-{n}".encode())
    t.source.append(0, "free", b"free-0")
    await wait_until(lambda: t.stream.acked(0) == [0, 1, 2, 3], "every event acked: the held ones parked")
    assert [ev.value for ev in t.lot.parked] == [f"capped-{n}".encode() for n in range(3)]
    assert t.handler.started_sites == ["free"]


async def test_a_site_without_caps_costs_no_query_while_there_is_no_global_cap(monkeypatch):
    from store.sites import Site

    class Asked(FakeCosts):
        asked = 0

        async def exhausted(self, site_id):
            self.asked += 1
            return None

    deps = FakeDeps(Asked())
    sites = {"plain": Site("plain"), "capped": Site("capped", monthly_budget_usd=5.0)}

    async def site(site_id):
        return sites[site_id]

    deps.site = site
    monkeypatch.setattr(spend, "_global_cap", lambda: None)
    await spend.check_budget(deps, "plain", "r1")
    assert deps.costs.asked == 0
    await spend.check_budget(deps, "capped", "r2")
    assert deps.costs.asked == 1
    monkeypatch.setattr(spend, "_global_cap", lambda: 100.0)  # any site may be held by the global cap
    await spend.check_budget(deps, "plain", "r3")
    assert deps.costs.asked == 2


# --- Postgres away when a cost is recorded: the row waits and is written once it is back ---


class FlakyCosts(FakeCosts):
    """Postgres refusing connections while `down`; counts the rows it inserted."""

    def __init__(self) -> None:
        super().__init__()
        self.down: BaseException | None = None
        self.inserts: list[str] = []

    async def record(self, cost):
        if self.down is not None:
            raise self.down
        recorded = await super().record(cost)
        if recorded.inserted:
            self.inserts.append(cost.call_id)
        return recorded


@pytest.fixture
def pending(monkeypatch):
    rows = PendingCosts(spend._write, first_delay=0.01, max_delay=0.05)
    monkeypatch.setattr(spend, "pending_costs", rows)
    return rows


def answered(call_id):
    return lambda: asyncio.sleep(0, SimpleNamespace(billed=billed(call_id)))


async def test_a_cost_postgres_cannot_take_is_kept_and_written_once_when_it_is_back(pending):
    costs = FlakyCosts()
    deps = FakeDeps(costs)
    costs.down = ConnectionRefusedError(111, "Connection refused")
    await spend.paid_article(deps, "r1", "s1", answered("c-1"))  # the step goes on: the call was paid
    await spend.paid_article(deps, "r1", "s1", answered("c-1"))  # a replay of the same call while still down
    await spend.record_prediction(deps, "r1", "s1", PredictionState("p-1", "succeeded", url="http://x/1.png"))
    assert costs.recorded == {} and len(pending) == 2
    assert metrics.cost_rows_pending._value.get() == 2

    costs.down = None
    await spend.paid_article(deps, "r2", "s1", answered("c-2"))  # the first direct success ends the wait
    await wait_until(lambda: len(pending) == 0, "the kept rows written")
    assert sorted(costs.inserts) == ["c-1", "c-2", "p-1"]  # each once
    assert costs.recorded[("openai", "c-1")].output_tokens == 2000
    assert metrics.cost_rows_pending._value.get() == 0


async def test_kept_rows_are_tried_again_by_themselves_and_an_answer_lost_in_the_outage_counts_once(pending):
    costs = FlakyCosts()
    deps = FakeDeps(costs)
    costs.down = asyncpg.InterfaceError("connection is closed")
    await spend.paid_article(deps, "r1", "s1", answered("c-1"))
    await spend.paid_article(deps, "r2", "s1", answered("c-2"))
    await wait_until(lambda: pending._backoff.failures >= 3, "a few tries while Postgres is away")
    costs.down = None
    # c-1 went in just before the outage, but its answer never came back: it is still kept
    await costs.record(CallCost("r1", "s1", "openai", "c-1", "gpt-4o-mini", Decimal("0.00135")))
    await wait_until(lambda: len(pending) == 0, "the kept rows written after a back-off")
    assert sorted(costs.inserts) == ["c-1", "c-2"] and len(costs.recorded) == 2


async def test_a_row_postgres_refuses_for_its_values_is_logged_with_its_figures_and_not_kept(pending, caplog):
    costs = FlakyCosts()
    costs.down = asyncpg.exceptions.CheckViolationError("request_costs_cost_usd_check")
    await spend.paid_article(FakeDeps(costs), "r1", "s1", answered("c-1"))
    assert len(pending) == 0
    assert "insert it by hand" in caplog.text and "openai call c-1" in caplog.text and "output_tokens=2000" in caplog.text


async def test_at_most_max_rows_wait_then_the_next_paid_step_waits_for_room(pending):
    pending.max_rows = 2
    costs = FlakyCosts()
    deps = FakeDeps(costs)
    costs.down = OSError("no route to host")
    await spend.paid_article(deps, "r1", "s1", answered("c-1"))
    await spend.paid_article(deps, "r2", "s1", answered("c-2"))
    third = asyncio.ensure_future(spend.paid_article(deps, "r3", "s1", answered("c-3")))
    await settle()
    assert not third.done() and len(pending) == 2
    costs.down = None
    await asyncio.wait_for(third, 10)
    await wait_until(lambda: len(pending) == 0, "all rows written")
    assert sorted(costs.inserts) == ["c-1", "c-2", "c-3"]


async def test_flush_writes_the_waiting_rows_before_a_clean_stop(pending):
    costs = FlakyCosts()
    costs.down = ConnectionResetError()
    await spend.paid_article(FakeDeps(costs), "r1", "s1", answered("c-1"))
    assert await pending.flush(0.2) == 1  # still away: it says so (and logs the row)
    costs.down = None
    assert await pending.flush(10) == 0 and costs.inserts == ["c-1"]
