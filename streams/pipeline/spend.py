"""Paid calls and money: a spend cap is checked before each paid call, and each call's cost recorded after it.

`paid_article` wraps one OpenAI call of the generate stage, `check_budget` and
`record_prediction` the Replicate predictions of covers.py. The cost is what the
provider reported (the completion's `usage`, the prediction's images or predict
time) priced with the price table (streams/costs/prices.py), recorded once per
provider call id (store/costs.py): a replayed event or a retried write records
nothing twice, and a call that was billed but not usable (an article cut off at
max_tokens) is recorded too.

A site whose cap is reached is held: `check_budget` raises `SiteHeld` before the
call starts, the runner parks the event like a paused site's, and the refresher
(`refresh`, every policy refresh) releases the site once no cap holds it. Calls
already running finish and are recorded: the overspend bound is what a site may
have in flight, docs/operations.md "Costs and budgets".
"""
from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any, Awaitable, Callable

from connectors.errors import ProviderError
from store.costs import CallCost, Costs, release_advice
from streams import metrics
from streams.app import app
from streams.costs.prices import load_prices
from streams.limiter.client import budgets
from streams.log_limit import LogLimit
from streams.pipeline.pending_costs import REFUSED, PendingCosts, describe, log_refused
from streams.pipeline.runner import SiteHeld
from streams.settings import settings

log = logging.getLogger(__name__)

BUDGET_EXHAUSTED = "budget_exhausted"  # the reason queued requests and the intake's 429 show
GAUGES_EVERY_SECONDS = 15.0
_record_failed = LogLimit(log, "could not record the cost of a paid call", interval=60.0)
_unpriced = LogLimit(log, "a paid call's model has no price", interval=300.0)
_gauges_at = 0.0

# The series the dashboard and alerts read exist from the start (see streams/metrics.py).
metrics.cost_usd.labels("openai", settings.openai_model)
metrics.cost_usd.labels("replicate", settings.replicate_model)


def _costs(deps: Any) -> Costs | None:
    # The worker's Deps has one once Postgres is connected; stand-ins in tests may have none: no checks, no records.
    return getattr(deps, "costs", None)


def _global_cap() -> float | None:
    return settings.global_daily_budget_usd or None


async def check_budget(deps: Any, site_id: str, request_id: str, *, holds_slot: str | None = None) -> None:
    """Raise SiteHeld if a spend cap holds the site: no new paid call starts for it.

    `holds_slot`: the caller took this in-flight slot (the run's `stage.slot_key`) with its
    permit; it is given back, since the request goes to wait parked.
    """
    costs = _costs(deps)
    if costs is None:
        return
    if _global_cap() is None:
        site = await deps.site(site_id)  # the worker's copy, at most two seconds old
        if site is not None and site.monthly_budget_usd is None and site.daily_budget_usd is None \
                and site.budget_exhausted is None:
            return  # no cap can hold it: no query (a cap set just now reaches this worker within two seconds)
    reason = await costs.exhausted(site_id)
    if reason is None:
        return
    deps.hold_here(site_id)
    if holds_slot is not None:
        await budgets.release_slot(site_id, holds_slot)
    log.info("site %s: %s (%s cap reached): request %s waits parked until the cap is raised or the period ends",
             site_id, BUDGET_EXHAUSTED, reason, request_id)
    raise SiteHeld(site_id, f"{BUDGET_EXHAUSTED} ({reason} cap)")


async def paid_article(deps: Any, request_id: str, site_id: str, call: Callable[[], Awaitable[Any]], *,
                       slot: str | None = None) -> Any:
    """One OpenAI call (each attempt of the retry loop): the cap checked first, the cost recorded after.

    `slot`: the in-flight slot the call's permit took (default the request id's, its first run's).
    """
    await check_budget(deps, site_id, request_id, holds_slot=slot or request_id)
    try:
        result = await call()
    except ProviderError as exc:
        if exc.billed is not None:  # answered and billed, then refused by our checks
            await _record_tokens(deps, request_id, site_id, exc.billed)
        raise
    if result.billed is not None:
        await _record_tokens(deps, request_id, site_id, result.billed)
    return result


async def record_article_cost(deps: Any, request_id: str, site_id: str, billed: Any) -> None:
    """The cost of an article found among the stored completions (generate.py): its call's answer was lost,
    so it was never recorded; recorded under the completion's id, so at most once."""
    await _record_tokens(deps, request_id, site_id, billed)


async def record_batch_line(deps: Any, request_id: str, site_id: str, billed: Any) -> None:
    """The cost of one line of an OpenAI batch (batch prices; streams/pipeline/batch_poll.py)."""
    await _record_tokens(deps, request_id, site_id, billed, lane="batch")


async def record_batch_share(deps: Any, request_id: str, site_id: str, *, call_id: str, model: str,
                             input_tokens: Decimal, output_tokens: Decimal, cached_tokens: Decimal) -> None:
    """A line's share of a batch's `usage`, when OpenAI no longer gives the line's own (batch_poll.py): the
    cost of the share's exact tokens, the tokens rounded to whole ones in the row."""
    price = load_prices(settings.prices_file).tokens(model)
    cost = None if price is None else price.cost(
        input_tokens, output_tokens, lane="batch", cached_tokens=cached_tokens)  # type: ignore[arg-type]
    whole = [int(t.to_integral_value()) for t in (input_tokens, output_tokens, cached_tokens)]
    metrics.billed_tokens.labels("openai", model, "input").inc(whole[0])
    metrics.billed_tokens.labels("openai", model, "output").inc(whole[1])
    await _record(deps, CallCost(
        request_id=request_id, site_id=site_id, provider="openai", call_id=call_id, model=model, cost_usd=cost,
        lane="batch", input_tokens=whole[0], output_tokens=whole[1], cached_tokens=whole[2],
    ))


async def _record_tokens(deps: Any, request_id: str, site_id: str, billed: Any, lane: str = "realtime") -> None:
    price = load_prices(settings.prices_file).tokens(billed.model)
    cost = None if price is None else price.cost(
        billed.prompt_tokens, billed.completion_tokens, lane=lane, cached_tokens=billed.cached_tokens)
    metrics.billed_tokens.labels("openai", billed.model, "input").inc(billed.prompt_tokens)
    metrics.billed_tokens.labels("openai", billed.model, "output").inc(billed.completion_tokens)
    await _record(deps, CallCost(
        request_id=request_id, site_id=site_id, provider="openai", call_id=billed.call_id, model=billed.model,
        cost_usd=cost, lane=lane, input_tokens=billed.prompt_tokens, output_tokens=billed.completion_tokens,
        cached_tokens=billed.cached_tokens,
    ))


async def record_prediction(deps: Any, request_id: str, site_id: str, state: Any) -> None:
    """The cost of a Replicate prediction that ended (succeeded, failed or canceled); others are skipped."""
    model = settings.replicate_model
    if state.status not in ("succeeded", "failed", "canceled"):
        return
    images = 1 if state.status == "succeeded" else 0  # one output: the connector asks for none more
    price = load_prices(settings.prices_file).image(model)
    cost = None if price is None else price.cost(images=images, seconds=state.predict_time)
    if images:
        metrics.billed_images.labels("replicate", model).inc(images)
    await _record(deps, CallCost(
        request_id=request_id, site_id=site_id, provider="replicate", call_id=state.id, model=model,
        cost_usd=cost, images=images, seconds=state.predict_time,
    ))


async def _record(deps: Any, cost: CallCost) -> None:
    """Record it; never raised: the call was paid, and failing the step would pay again.

    While Postgres cannot take the row it waits in `pending_costs` and is written
    as soon as Postgres is back (a row Postgres refuses for its values is logged).
    """
    if cost.cost_usd is None:
        metrics.unpriced_calls.labels(cost.provider, cost.model).inc()
        _unpriced.failed(None, f"{cost.provider} model {cost.model!r} is not in the price table "
                         f"{settings.prices_file or 'streams/costs/prices.toml'}; recorded without a cost")
    if _costs(deps) is None:
        return
    try:
        await _write(deps, cost)
    except REFUSED as exc:
        log_refused(exc, cost)
        return
    except Exception as exc:
        _record_failed.failed(exc, f"{describe(cost)}; kept, written once Postgres takes it")
        await pending_costs.keep(deps, cost)
        return
    _record_failed.ok()
    pending_costs.wake()


async def _write(deps: Any, cost: CallCost) -> None:
    """Insert the row (once per call id), then count it and hold what its cost makes reach a cap."""
    costs = _costs(deps)
    assert costs is not None
    recorded = await costs.record(cost)
    if not recorded.inserted:
        return
    if cost.cost_usd is not None:
        metrics.cost_usd.labels(cost.provider, cost.model).inc(float(cost.cost_usd))
    if recorded.exhausted is not None:
        deps.hold_here(cost.site_id)
        log.warning("site %s reached its %s spend cap: no new paid call starts for it; its requests wait (%s): %s",
                    cost.site_id, "monthly" if recorded.exhausted == "month" else "daily", BUDGET_EXHAUSTED,
                    release_advice(recorded.exhausted, cost.site_id))
    cap = _global_cap()
    if cap is not None and recorded.global_day_usd >= Decimal(str(cap)):
        held = await costs.hold_all()
        if held:
            log.warning("all sites spent %.4f USD today, the global daily cap (BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD="
                        "%g) is reached: %d sites held until tomorrow (UTC) or a higher cap",
                        recorded.global_day_usd, cap, held)


# Costs Postgres could not take when their call ended: written again until it does.
pending_costs = PendingCosts(_write)
WRITE_PENDING_ON_STOP_SECONDS = 10.0


@app.on_before_shutdown.connect
async def _write_pending_costs(app_: Any, **kwargs: Any) -> None:
    """A clean stop gives the rows still waiting for Postgres a last chance (those left are logged, with figures)."""
    if len(pending_costs):
        await pending_costs.flush(WRITE_PENDING_ON_STOP_SECONDS)


async def refresh(costs: Any) -> dict[str, str | None]:
    """Release or hold sites whose caps or periods changed; every GAUGES_EVERY_SECONDS, the budget gauges.

    Called with every refresh of the site controls (streams/pipeline/deps.py).
    """
    global _gauges_at
    changed = await costs.refresh_budgets(_global_cap())
    for site_id, reason in changed.items():
        log.info("site %s: %s", site_id, f"held, {reason} spend cap reached" if reason else "no spend cap holds it now")
    if time.monotonic() - _gauges_at >= GAUGES_EVERY_SECONDS:
        _gauges_at = time.monotonic()
        await publish_gauges(costs)
    return changed


async def publish_gauges(costs: Costs) -> None:
    """The spend-cap gauges, from Postgres; they keep their last value while it cannot be read, and
    blogstream_figures_last_success_timestamp_seconds{source="spend"} says when they were last read."""
    ratios: dict[tuple[str, ...], float] = {}
    for site in await costs.budgets():
        for period, spent, cap in (("month", site["spent_this_month_usd"], site["monthly_budget_usd"]),
                                   ("day", site["spent_today_usd"], site["daily_budget_usd"])):
            if cap is not None:
                ratio = spent / cap if cap > 0 else 1.0
                if ratio >= 0.5:
                    ratios[(site["site_id"], period)] = ratio
    held = {"month": 0, "day": 0, "global_day": 0} | await costs.held_counts()
    cap = _global_cap()
    global_ratio = (await costs.spent_today()) / cap if cap else 0.0
    metrics.publish(metrics.site_spend_cap_used, ratios)
    for cap_name, count in held.items():
        metrics.sites_budget_exhausted.labels(cap_name).set(count)
    metrics.global_spend_cap_used.set(global_ratio)
    metrics.figures_last_success.labels("spend").set(time.time())
