"""The growth benchmark's pure helpers: slope, histogram difference, labelled values, profile shares, ratios."""
from __future__ import annotations

import math

import pytest

from stack.bench_growth import (book_cost, bytes_per_queued, entry_breakdown, histogram_delta, labelled_value,
                                per_thousand, profile_shares, ratio, slope)


def test_slope_is_the_least_squares_fit():
    assert slope([1_000, 10_000, 100_000], [2_000 + 3 * x for x in (1_000, 10_000, 100_000)]) == pytest.approx(3.0)
    assert slope([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert slope([5], [1]) is None
    assert slope([5, 5], [1, 2]) is None


def test_bytes_per_queued_request_is_the_rss_slope_in_bytes():
    runs = [{"held": 1_000, "rss_mb": 120.0}, {"held": 11_000, "rss_mb": 130.0}]
    assert bytes_per_queued(runs) == pytest.approx(1024 * 1024 / 1_000)
    assert bytes_per_queued(runs[:1]) is None


def test_a_histogram_delta_counts_only_what_came_between_the_scrapes():
    before = {0.001: 5.0, 0.01: 8.0, math.inf: 10.0}
    after = {0.001: 7.0, 0.01: 15.0, math.inf: 20.0}
    assert histogram_delta(after, before) == {0.001: 2.0, 0.01: 7.0, math.inf: 10.0}
    assert histogram_delta(after, {}) == after


def test_labelled_value_sums_the_samples_with_that_label():
    text = "\n".join([
        "# HELP blogstream_limiter_grants_total Coordinator: permits granted",
        'blogstream_limiter_grants_total{budget="openai_requests"} 120.0',
        'blogstream_limiter_grants_total{budget="openai_tokens"} 120.0',
        'blogstream_site_queued{site="a",stage="generate"} 3.0',
        'blogstream_site_queued{site="b",stage="generate"} 4.0',
        'blogstream_site_queued{site="b",stage="image"} 9.0',
    ])
    assert labelled_value(text, "blogstream_limiter_grants_total", "budget", "openai_requests") == 120.0
    assert labelled_value(text, "blogstream_site_queued", "stage", "generate") == 7.0
    assert labelled_value(text, "blogstream_site_queued", "stage", "publish") == 0.0


def test_profile_shares_count_a_sample_once_per_group_it_touches():
    collapsed = "\n".join([
        "MainThread;run_once (/w/streams/limiter/coordinator.py:410);_grant_ready (/w/streams/limiter/book.py:260) 30",
        "MainThread;run_once (/w/streams/limiter/coordinator.py:410) 10",
        "MainThread;_dispatch (/w/streams/pipeline/runner.py:300);_next (/w/streams/pipeline/runner.py:255) 5",
        "MainThread;_next (/w/other/module.py:1) 3",
        "MainThread;write (/usr/lib/python3.11/asyncio/streams.py:343) 52",
        "not a sample line",
    ])
    total, shares = profile_shares(collapsed, {
        "coordinator": ("streams/limiter/coordinator.py", "streams/limiter/book.py"),
        "dispatch": (("_next", "streams/pipeline/runner.py"),),
    })
    assert total == 100
    assert shares == {"coordinator": 40, "dispatch": 5}


def test_entry_breakdown_names_the_outermost_frame_of_the_group_in_each_sample():
    collapsed = "\n".join([
        "MainThread;run_once (/w/streams/limiter/coordinator.py:410);_grant_ready (/w/streams/limiter/book.py:260) 30",
        "MainThread;run_once (/w/streams/limiter/coordinator.py:410) 10",
        "Thread-2;publish (/w/streams/limiter/published.py:80);figures (/w/streams/limiter/book.py:90) 7",
        "MainThread;write (/usr/lib/python3.11/asyncio/streams.py:343) 52",
    ])
    patterns = ("streams/limiter/coordinator.py", "streams/limiter/book.py", "streams/limiter/published.py")
    assert entry_breakdown(collapsed, patterns) == [("run_once", 40), ("publish", 7)]
    assert entry_breakdown(collapsed, patterns, top=1) == [("run_once", 40)]
    assert entry_breakdown("", patterns) == []


def test_per_thousand_and_ratio_leave_out_what_was_not_measured():
    assert per_thousand(3.0, 1_500) == pytest.approx(2.0)
    assert per_thousand(None, 1_500) is None
    assert per_thousand(3.0, 0) is None
    assert ratio([0.004, None, 0.006]) == pytest.approx(1.5)
    assert ratio([0.004]) is None
    assert ratio([0.0, 0.1]) is None


def test_the_book_cost_keeps_its_line_and_counts_the_grants():
    cost = book_cost(sites=20, waiting=40, grants=50)
    assert cost["sites"] == 20
    assert cost["grants"] >= 50
    assert 30 <= cost["waiting"] <= 40  # each granted site asks again: the line stays as long
    assert cost["cpu_per_1000"] > 0


def test_a_function_pattern_matches_methods_as_py_spy_names_them():
    collapsed = "MainThread;StageRunner._next (/w/streams/pipeline/runner.py:255) 4\nMainThread;Other._next_one (/w/streams/pipeline/runner.py:9) 1"
    assert profile_shares(collapsed, {"dispatch": (("_next", "streams/pipeline/runner.py"),)}) == (5, {"dispatch": 4})
