"""The tier benchmark's pure helpers: backlog size, calls in flight, cores, machine busy share."""
from __future__ import annotations

import pytest

from stack.bench_tier import _rejections, backlog_size, cores, in_flight, machine_busy


def test_the_backlog_is_minutes_of_work_at_the_request_limit():
    assert backlog_size(15) == 75_000
    assert backlog_size(0.5, rpm=450) == 225
    assert backlog_size(0) == 1


def test_a_call_is_in_flight_from_admission_until_answered():
    # [t, site, tokens, external, charged, answered_at]
    events = [[0.0, "a", 10, False, 20, 2.5], [1.0, "b", 10, False, 20, 1.5], [1.2, "c", 10, True, 20, 9.0]]
    assert in_flight(events, 0.0, 3.0, 0.5) == [1, 1, 2, 1, 1, 0, 0]


def test_an_unanswered_call_stays_in_flight_to_the_end():
    assert in_flight([[1.0, "a", 0, False, 20, None]], 0.0, 2.0, 1.0) == [0, 1, 1]


def test_cores_are_cpu_seconds_over_wall_seconds():
    assert cores([(10.0, 100.0, 5.0), (12.0, 110.0, 6.0), (20.0, 120.0, 9.0)]) == pytest.approx(0.4)
    assert cores([(10.0, 100.0, 5.0)]) is None


def test_machine_busy_leaves_out_idle_and_iowait():
    before = [100, 0, 100, 700, 100, 0, 0, 0]
    after = [200, 0, 200, 800, 200, 0, 0, 0]  # 200 busy, 200 idle or waiting on disk
    assert machine_busy(before, after) == pytest.approx(0.5)
    assert machine_busy(before, before) == 0.0


def test_the_429s_line_counts_them_by_minute_and_says_how_far_over_they_asked():
    rows = [[5.0, "tokens", 100], [61.0, "tokens", 3], [62.0, "tokens", 40], [130.0, "requests", None]]
    assert _rejections(rows) == "min 0: 1, min 1: 2, min 2: 1; over by 40 / 100 tokens"
    assert _rejections([]) == "none"


def test_lease_refusals_are_read_from_the_workers_scrapes_by_budget_and_reason():
    from prometheus_client import generate_latest

    from stack.bench_tier import lease_refusals
    from streams import metrics

    metrics.lease_refusals_total.labels("replicate_requests", "pushed back").inc(0)
    text = generate_latest(metrics.registry).decode()
    base = lease_refusals([text]).get("replicate_requests pushed back", 0.0)
    metrics.lease_refusals_total.labels("replicate_requests", "pushed back").inc(3)
    text = generate_latest(metrics.registry).decode()
    assert lease_refusals([text, text])["replicate_requests pushed back"] == 2 * (base + 3)


def test_the_coordinator_s_lag_is_summed_up_as_p50_p99_max_and_samples():
    from stack.bench_tier import lag_summary

    assert lag_summary([]) is None
    samples = [(float(t), lag) for t, lag in enumerate([5] * 98 + [900, 4000])]
    assert lag_summary(samples) == (5, 4000, 4000, 100)
    assert lag_summary([(0.0, 7)]) == (7, 7, 7, 1)
