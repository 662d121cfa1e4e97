"""Our metrics: names per the Prometheus conventions (promtool), the consumer lag arithmetic, provider labels."""
from __future__ import annotations

import ast
from pathlib import Path

from aiokafka import TopicPartition as TP
from prometheus_client import Counter, Gauge, Histogram, generate_latest

from connectors import openai_writer, replicate_images, wix_blog
from streams import metrics
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS, wix_requests
from streams.monitoring import lag_by_topic
from streams.pipeline import covers, generate, publish
from tests.ops.conftest import run_promtool

LINT = "promtool-lint"


def ours() -> list[Counter | Gauge | Histogram]:
    return [v for v in vars(metrics).values() if isinstance(v, (Counter, Gauge, Histogram))]


def test_promtool_finds_no_problem_in_our_metrics(promtool):
    """Every metric with a sample (a labelled one shows nothing until it has a child), linted."""
    added = []
    try:
        for metric in ours():
            labels = (LINT,) * len(metric._labelnames)
            child = metric.labels(*labels) if labels else metric
            if labels:
                added.append((metric, labels))
            if isinstance(metric, Histogram):
                child.observe(0)
            else:
                child.inc(0)
        text = generate_latest(metrics.registry).decode()
    finally:
        for metric, labels in added:
            metric.remove(*labels)
    assert len(ours()) >= 25 and all(f"# TYPE {m._name}" in text for m in ours())
    output = run_promtool(promtool, "check", "metrics", stdin=text)
    assert output.strip() == "", output


def test_the_worker_serves_only_our_metrics():
    """Faust's own sensors (blogstream_events_runtime_ms & co.) are not registered: see streams/api/ops.py."""
    import streams.api.ops  # noqa: F401 (it serves /metrics; it used to register Faust's sensors too)

    assert {family.name for family in metrics.registry.collect()} == {m._name for m in ours()}


# --- consumer lag --------------------------------------------------------------------------------

REQ, RES = "run.blog.requests", "run.blog.results"


def test_lag_sums_end_minus_committed_over_partitions():
    tps = [TP(REQ, 0), TP(REQ, 1), TP(RES, 0)]
    lag = lag_by_topic(tps, {TP(REQ, 0): 5, TP(REQ, 1): 10, TP(RES, 0): 3},
                       beginnings={tp: 0 for tp in tps}, ends={TP(REQ, 0): 8, TP(REQ, 1): 10, TP(RES, 0): 7})
    assert lag == {REQ: 3 + 0, RES: 4}


def test_a_partition_without_a_commit_counts_from_its_log_start():
    """Before the fix such a partition (a fresh group, or one its worker never committed) counted 0."""
    tps = [TP(REQ, 0), TP(REQ, 1), TP(REQ, 2)]
    lag = lag_by_topic(tps, {TP(REQ, 0): 4}, beginnings={TP(REQ, 0): 0, TP(REQ, 1): 0, TP(REQ, 2): 20},
                       ends={TP(REQ, 0): 4, TP(REQ, 1): 7, TP(REQ, 2): 25})
    assert lag == {REQ: 0 + 7 + 5}


def test_a_negative_commit_means_none_and_a_commit_before_the_log_start_counts_from_the_start():
    tps = [TP(REQ, 0), TP(REQ, 1)]
    lag = lag_by_topic(tps, {TP(REQ, 0): -1, TP(REQ, 1): 2}, beginnings={TP(REQ, 0): 3, TP(REQ, 1): 10},
                       ends={TP(REQ, 0): 9, TP(REQ, 1): 12})
    assert lag == {REQ: 6 + 2}


def test_lag_is_never_negative_and_empty_partitions_count_zero():
    tps = [TP(REQ, 0), TP(REQ, 1)]
    lag = lag_by_topic(tps, {TP(REQ, 0): 9}, beginnings={TP(REQ, 0): 0, TP(REQ, 1): 0},
                       ends={TP(REQ, 0): 7, TP(REQ, 1): 0})  # a stale end offset read before the commit
    assert lag == {REQ: 0}
    assert lag_by_topic([], {}, {}, {}) == {}


# --- labels --------------------------------------------------------------------------------------


def test_the_provider_label_comes_from_the_budgets_a_call_spends():
    assert metrics.provider_of({OPENAI_REQUESTS: 1, OPENAI_TOKENS: 900}) == "openai"
    assert metrics.provider_of({REPLICATE_REQUESTS: 1}) == "replicate"
    assert metrics.provider_of({wix_requests("shop_1:x"): 1}) == "wix"
    assert metrics.provider_of({}) == "unknown"


def test_the_series_known_in_advance_name_the_real_providers_and_stages():
    assert set(metrics.PROVIDERS) == {openai_writer.PROVIDER, replicate_images.PROVIDER, wix_blog.PROVIDER}
    assert set(metrics.STAGES) == {generate.STAGE, covers.STAGE, publish.STAGE}
    for stage in metrics.STAGES:  # present at 0 from the start, so the first dead letter is an increase
        value = metrics.registry.get_sample_value(
            "blogstream_stage_events_total", {"stage": stage, "outcome": "dead_letter"})
        assert value is not None
    for provider in metrics.PROVIDERS:
        assert metrics.registry.get_sample_value(
            "blogstream_provider_calls_total", {"provider": provider, "outcome": "RateLimited"}) is not None


def stage_event_labels() -> tuple[set[str], set[str]]:
    """What the code counts in blogstream_stage_events_total, read from its source: the stages that
    dead-letter (a module's STAGE passed to dead_letter) and the outcomes the stage runners count
    under their own name (`stage_events.labels(self.name, "<outcome>")`)."""
    dead_lettering, runner_outcomes = set(), set()
    for path in (Path(metrics.__file__).parent / "pipeline").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        stage = next((node.value.value for node in tree.body if isinstance(node, ast.Assign)
                      and [getattr(t, "id", None) for t in node.targets] == ["STAGE"]
                      and isinstance(node.value, ast.Constant)), None)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            args = node.args
            if name == "dead_letter" and args and getattr(args[0], "id", None) == "STAGE":
                dead_lettering.add(stage)
            if (name == "labels" and getattr(node.func.value, "attr", None) == "stage_events" and len(args) == 2
                    and ast.unparse(args[0]) == "self.name" and isinstance(args[1], ast.Constant)):
                runner_outcomes.add(args[1].value)
    return dead_lettering, runner_outcomes


def test_every_stage_event_the_code_counts_has_a_series_from_the_start():
    """A counter series born with its first event hides that event from increase(): the sink's first dead
    letter escaped BlogstreamDeadLetters, and the first events parked after a start (counted by the
    batch) showed no increase at all."""
    dead_lettering, runner_outcomes = stage_event_labels()
    assert "sink" in dead_lettering and {"retried", "parked"} <= runner_outcomes  # the parse finds them
    missing = [(stage, "dead_letter") for stage in sorted(dead_lettering)] + [
        (stage, outcome) for stage in metrics.STAGES for outcome in sorted(runner_outcomes)]
    missing = [labels for labels in missing if metrics.registry.get_sample_value(
        "blogstream_stage_events_total", dict(zip(("stage", "outcome"), labels))) is None]
    assert missing == []
