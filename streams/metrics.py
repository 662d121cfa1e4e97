"""Prometheus metrics of blogstream, in one registry served at /metrics (streams/api/ops.py).

Only ours: Faust's own sensors are not exported (see streams/api/ops.py for why).
A registry of our own keeps tests from colliding in the process-global default
one. Names follow the Prometheus conventions (`promtool check metrics`, run by
tests/ops/test_metrics.py): counters end in `_total`, durations in `_seconds`,
0..1 figures in `_ratio`. docs/operations.md lists them; ops/prometheus/alerts.yml
and ops/grafana/ use them.
"""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from store.batches import HELD

registry = CollectorRegistry()

_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

permit_wait_seconds = Histogram(
    "blogstream_permit_wait_seconds", "Time a stage waited for its permit (ask to usable grant)",
    ["budget"], registry=registry, buckets=_LATENCY,
)
permit_queue_seconds = Histogram(
    "blogstream_permit_queue_seconds", "Time an ask waited in the coordinator for room",
    ["budget"], registry=registry, buckets=_LATENCY,
)
limiter_clock_offset = Gauge(
    "blogstream_limiter_clock_offset_seconds",
    "The coordinator's clock minus this worker's, estimated from permit round trips (positive: this worker is behind)",
    registry=registry,
)
limiter_clock_steps = Counter(
    "blogstream_limiter_clock_steps_total", "Steps of the coordinator's wall clock beyond the wire margin (NTP, a "
    "resumed VM), by direction: a step forward holds every grant for a window, the grace and the longest lease",
    ["direction"],
    registry=registry,
)
permits_expired = Counter(
    "blogstream_permits_expired_total", "Grants that arrived too late to use safely", registry=registry,
)
provider_calls = Counter(
    "blogstream_provider_calls_total", "Provider calls by outcome", ["provider", "outcome"], registry=registry,
)
wix_call_items = Histogram(
    "blogstream_wix_call_items", "Posts or images one Wix call carried (1: a single call; more: a bulk call)",
    ["kind"], registry=registry, buckets=(1, 2, 5, 10, 20, 50, 100),
)
stage_events = Counter(
    "blogstream_stage_events_total", "Stage events by outcome", ["stage", "outcome"], registry=registry,
)
budget_used = Gauge(
    "blogstream_budget_used", "Units used in the current window (global, from the coordinator)", ["budget"], registry=registry,
)
budget_limit = Gauge(
    "blogstream_budget_limit", "Effective limit of a budget per window", ["budget"], registry=registry,
)
budget_waiting = Gauge(
    "blogstream_budget_waiting", "Asks waiting for room in a budget", ["budget"], registry=registry,
)
site_queued = Gauge(
    "blogstream_site_queued", "Requests of a site read ahead and waiting in this worker", ["stage", "site"], registry=registry,
)
site_in_flight = Gauge(
    "blogstream_site_in_flight", "Requests of a site holding an in-flight slot (global)", ["site"], registry=registry,
)
site_budget_used = Gauge(
    "blogstream_site_budget_used", "Units of a global budget granted to a site in the current window (global)",
    ["budget", "site"], registry=registry,
)
site_budget_share = Gauge(
    "blogstream_site_budget_share_ratio", "A site's part of the units of a global budget used in the current window "
    "(0..1, global)", ["budget", "site"], registry=registry,
)
sink_rows = Counter(
    "blogstream_sink_rows_total", "Outcome rows written to Postgres", registry=registry,
)
consumer_lag = Gauge(
    "blogstream_consumer_lag", "Events in a stage topic not yet committed by the worker group, counted from the "
    "log start where the group has committed nothing yet (global)",
    ["topic"], registry=registry,
)
requests_by_status = Gauge(
    "blogstream_requests", "Requests in Postgres blog_generations by status (global, read by the heartbeat)",
    ["status"], registry=registry,
)
requests_pending_bulk = Gauge(
    "blogstream_requests_pending_bulk", "PENDING requests of the bulk lane (\"priority\": \"bulk\"): counted apart per "
    "site at the intake, and they leave BLOGSTREAM_QUEUE_INTERACTIVE_SHARE of the queue free (global, from Postgres)",
    registry=registry,
)
batch_lane_requests = Gauge(
    "blogstream_batch_lane_requests", "PENDING requests the bulk lane holds for the OpenAI Batch API: waiting for "
    "a file (queued) or in a running batch (batched); PENDING on purpose, for hours (global, from Postgres)",
    ["state"], registry=registry,
)
batch_oldest_open = Gauge(
    "blogstream_openai_batch_oldest_open_timestamp_seconds", "When the oldest OpenAI batch not yet ended was "
    "recorded (Unix time), per model; no series while none is open (global, from Postgres)",
    ["model"], registry=registry,
)
# The global gauges keep their last value while their source does not answer (the broker for the lag,
# Postgres for the requests, the limiter coordinator for the budget and per-site gauges): what they show
# is as old as `time() - ` this (alerts.yml, BlogstreamFiguresStale).
FIGURE_SOURCES = ("kafka", "postgres", "limiter", "spend")
figures_last_success = Gauge(
    "blogstream_figures_last_success_timestamp_seconds", "When this worker last read the source of some global "
    "gauges (Unix time): kafka (blogstream_consumer_lag), postgres (blogstream_requests), limiter "
    "(blogstream_budget_*, blogstream_site_in_flight, blogstream_site_budget_*), spend (the spend-cap gauges: "
    "blogstream_*spend_cap_used_ratio, blogstream_sites_budget_exhausted); 0 before the first read",
    ["source"], registry=registry,
)


# --- the limiter: coordinator and worker side ----------------------------------
_FINE = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
         0.5, 1.0, 2.0, 5.0, 10.0)
event_loop_lag_seconds = Histogram(
    "blogstream_event_loop_lag_seconds",
    "How late the worker's event loop wakes a task (sampled at random moments, 100 ms apart on average): "
    "what every permit, timer and answer waits on top of its own work when the worker is busy",
    registry=registry, buckets=_FINE,
)
gc_pause_seconds = Histogram(
    "blogstream_gc_pause_seconds",
    "How long each garbage collection of the worker held its event loop, by generation (0, 1, 2): "
    "the part of the event loop's lateness the collector makes",
    ["generation"], registry=registry, buckets=(0.0005,) + _FINE,
)
gc_cpu_seconds = Counter(
    "blogstream_gc_cpu_seconds",
    "CPU time the worker's garbage collections took, by generation; against the sum of "
    "blogstream_gc_pause_seconds, the rest of the pauses is waiting for a core",
    ["generation"], registry=registry,
)
permit_overhead_seconds = Histogram(
    "blogstream_permit_overhead_seconds",
    "Permit latency not spent waiting for room: worker-side ask-to-grant time minus the time the ask "
    "waited in the coordinator for the budget (Kafka round trip + coordinator pass + durable write)",
    ["budget"], registry=registry, buckets=_FINE,
)
grant_persist_seconds = Histogram(
    "blogstream_limiter_persist_seconds", "Coordinator: time to make a pass's grants durable (changelog acks)",
    registry=registry, buckets=_FINE,
)
limiter_ask_age_seconds = Histogram(
    "blogstream_limiter_ask_age_seconds",
    "Age of a blog.limiter record (since its producer stamped it) when the coordinator's worker read it "
    "(at=read, on Faust's loop) and when the coordinator handled it (at=handled, on its own loop)",
    ["at"], registry=registry, buckets=_FINE,
)
grants_total = Counter(
    "blogstream_limiter_grants_total", "Coordinator: permits granted", ["budget"], registry=registry,
)
reasks_total = Counter(
    "blogstream_permit_reasks_total", "Worker: asks re-sent (after a rebalance or a long silence)",
    registry=registry,
)
budget_factor = Gauge(
    "blogstream_budget_factor_ratio", "Coordinator: adaptive share of a budget's limit (1.0 = all of it)", ["budget"],
    registry=registry,
)
budget_external = Gauge(
    "blogstream_budget_external", "Coordinator: units per window the provider reports used by someone else",
    ["budget"], registry=registry,
)
permit_send_delay_seconds = Histogram(
    "blogstream_permit_send_delay_seconds",
    "From a permit's grant (coordinator clock) to its request going on the wire (worker clock); "
    "the safety rule needs this below the grace",
    ["budget"], registry=registry, buckets=_FINE,
)
late_sends_total = Counter(
    "blogstream_permit_late_sends_total", "Worker: permitted requests that left after the permit's use-by time "
    "(reported to the coordinator, which keeps counting them)", registry=registry,
)
permits_leased_total = Counter(
    "blogstream_permits_leased_total", "Worker: permits taken from a lease this worker holds (no round trip)",
    ["budget"], registry=registry,
)
lease_refusals_total = Counter(
    "blogstream_lease_refusals_total", "Coordinator: leases asked for and refused, by budget and reason "
    "(contended, pushed back, paced, too small, near the limit; docs/limiter.md, Leases): those permits "
    "then make a round trip each", ["budget", "reason"], registry=registry,
)
late_unsafe_total = Counter(
    "blogstream_permit_late_unsafe_total", "Coordinator: late reports that came after the permit's room had "
    "been handed out again (the provider may have seen more than the limit)", registry=registry,
)
coordinator_active = Gauge(
    "blogstream_limiter_coordinator", "1 on the worker that runs the limiter coordinator", registry=registry,
)


# --- costs and spend caps (streams/pipeline/spend.py; per-site money is in Postgres) -------
cost_usd = Counter(
    "blogstream_cost_usd_total", "US dollars of the provider calls recorded (the price table x what the provider "
    "reported used)", ["provider", "model"], registry=registry,
)
billed_tokens = Counter(
    "blogstream_billed_tokens_total", "Tokens the provider billed (its `usage`), input or output",
    ["provider", "model", "kind"], registry=registry,
)
stored_articles_found = Counter(
    "blogstream_stored_articles_found_total", "Articles found among OpenAI's stored completions after an answer "
    "was lost (each one an article not paid twice)", registry=registry,
)
billed_images = Counter(
    "blogstream_billed_images_total", "Images the provider billed", ["provider", "model"], registry=registry,
)
unpriced_calls = Counter(
    "blogstream_unpriced_calls_total", "Paid calls of a model the price table has no price for (recorded without "
    "a cost)", ["provider", "model"], registry=registry,
)
cost_rows_pending = Gauge(
    "blogstream_cost_rows_pending", "Cost rows of paid calls waiting for Postgres to take them (written again "
    "until it does; lost if the worker is killed meanwhile)", registry=registry,
)
site_spend_cap_used = Gauge(
    "blogstream_site_spend_cap_used_ratio", "A site's spend this UTC month or day over its cap, for sites at half "
    "of a cap or more (global, from Postgres)", ["site", "period"], registry=registry,
)
global_spend_cap_used = Gauge(
    "blogstream_global_spend_cap_used_ratio", "All sites' spend this UTC day over BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD "
    "(0 without that cap)", registry=registry,
)
sites_budget_exhausted = Gauge(
    "blogstream_sites_budget_exhausted", "Sites a spend cap holds now (no new paid call starts for them)",
    ["cap"], registry=registry,
)


# --- series that exist from the start ----------------------------------------------
# A counter series born with its first event has no earlier sample, so rate() and
# increase() never see that event: an alert on dead letters or provider errors would
# miss the first one. The series the alerts and the dashboard name start at 0.
PROVIDERS = ("openai", "replicate", "wix")  # the connectors' PROVIDER; budget names start with them
STAGES = ("generate", "image", "publish")  # the STAGE of streams/pipeline/{generate,covers,publish}.py
STAGE_OUTCOMES = ("ok", "failed", "cancelled", "dead_letter", "retried", "parked", "moved")
for _stage in STAGES:
    for _outcome in STAGE_OUTCOMES:
        stage_events.labels(_stage, _outcome)
stage_events.labels("sink", "dead_letter")  # the sink (streams/pipeline/sink.py) has no other outcome
for _provider in PROVIDERS:
    for _outcome in ("ok", "RateLimited"):
        provider_calls.labels(_provider, _outcome)
for _cap in ("month", "day", "global_day"):
    sites_budget_exhausted.labels(_cap)
for _state in HELD:  # the lane's states that still owe an article
    batch_lane_requests.labels(_state)
for _source in FIGURE_SOURCES:  # at 0 (never) until the first read: a source never reached is seen too
    figures_last_success.labels(_source)


def provider_of(budgets: Iterable[str]) -> str:
    """The provider whose budgets a call spends: `openai_tokens` -> openai, `wix_requests:<site>` -> wix.

    Budget names start with their provider's name (streams/limiter/specs.py).
    """
    names = sorted({budget.split("_", 1)[0] for budget in budgets})
    return "+".join(names) or "unknown"


def budget_label(budget: str) -> str:
    """The `budget` label of a permit or grant metric: a per-site budget counts under its kind.

    `wix_requests:<site>` is one budget per site; as a label it made one series
    per site in every histogram (52,000 lines of /metrics per worker at 1,000
    sites, growing with them: a cardinality Prometheus operators alert on).
    Per-site figures have their own gauges (`blogstream_site_budget_*`).
    """
    return budget.split(":", 1)[0]


_published: dict[Gauge, set[tuple[str, ...]]] = {}  # gauge -> the label sets publish() set last time


def publish(gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
    """Set a labelled gauge to exactly `values`.

    Label sets missing from `values` are removed rather than left at their
    last value: a site that finished its work drops out instead of showing
    stale figures, and the number of series stays that of the sites active now.
    """
    for labels in _published.get(gauge, set()) - values.keys():
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
    _published[gauge] = set(values)


def site_budget_shares(stats: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """budget -> site -> (units in the window, part of all units in the window, 0..1).

    From the coordinator's stats (`/api/limiter`): its `shares` split each
    global budget's `used_in_window` by site. Used by the gauges and by
    `blogstream health`, so both show the same figure.
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for budget, by_site in (stats.get("shares") or {}).items():
        used = float((stats.get(budget) or {}).get("used_in_window") or 0.0)
        out[budget] = {site: (float(units), units / used if used > 0 else 0.0) for site, units in by_site.items()}
    return out
