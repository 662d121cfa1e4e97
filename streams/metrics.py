"""Prometheus metrics of blogstream, in one registry served at /metrics.

Faust's own sensors (consumer lag = `blogstream_topic_partition_end_offset -
blogstream_topic_partition_offset_commited`) share the registry, see
streams/web.py. A registry of our own keeps tests from colliding in the
process-global default one.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
permits_expired = Counter(
    "blogstream_permits_expired_total", "Grants that arrived too late to use safely", registry=registry,
)
provider_calls = Counter(
    "blogstream_provider_calls_total", "Provider calls by outcome", ["provider", "outcome"], registry=registry,
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
    "blogstream_site_budget_share", "A site's part of the units of a global budget used in the current window "
    "(0..1, global)", ["budget", "site"], registry=registry,
)
sink_rows = Counter(
    "blogstream_sink_rows_total", "Outcome rows written to Postgres", registry=registry,
)
consumer_lag = Gauge(
    "blogstream_consumer_lag", "Events in a stage topic not yet committed by the worker group (global)",
    ["topic"], registry=registry,
)


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
