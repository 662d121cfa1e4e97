"""The alert rules (ops/prometheus/alerts.yml) and the Prometheus config: promtool checks them and runs
their unit tests (ops/prometheus/alerts_test.yml); every rule has tests."""
from __future__ import annotations

import json
import re

import yaml
from prometheus_client import Counter, Gauge, Histogram

from ops.grafana import dashboard
from stack.observe import render_config
from streams import metrics
from tests.ops.conftest import PROMETHEUS_DIR, run_promtool

RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"


def alert_names() -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(promtool):
    output = run_promtool(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_promtool_rule_unit_tests_pass(promtool):
    output = run_promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output and "FAILED" not in output


def test_every_rule_has_a_test_that_fires_it_and_one_that_does_not():
    fires, silent = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(alert_names())
    assert len(names) == len(alert_names()), "two rules share a name"
    assert names - fires == set(), "rules never shown to fire"
    assert names - silent == set(), "rules never shown to stay silent"
    assert (fires | silent) - names == set(), "tests of rules that do not exist"


def test_every_rule_has_a_severity_and_a_summary():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_every_rule_says_what_to_do():
    """The one who is paged reads the alert, not this repository: each rule's description is its runbook.
    BlogstreamNoWorker, BlogstreamStageStuck, BlogstreamConsumerLagCritical and BlogstreamProviderThrottling had a
    summary only ("No blogstream worker is reporting"), with nothing to check or do."""
    missing = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
               if len(rule["annotations"].get("description", "").split()) < 8]
    assert missing == []


def test_the_prometheus_config_and_its_local_rendering_are_valid(promtool, tmp_path):
    run_promtool(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    local = tmp_path / "prometheus.yml"
    doc = render_config(tmp_path, scrape_interval="1s")
    local.write_text(yaml.safe_dump(doc))
    output = run_promtool(promtool, "check", "config", str(local), cwd=tmp_path)
    assert f"SUCCESS: {len(alert_names())} rules found" in output
    assert doc["rule_files"] == [str(RULES)]
    assert doc["scrape_configs"][0]["job_name"] == "blogstream"  # the alerts name it: up{job="blogstream"}
    assert doc["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "targets" / "*.json")]
    assert doc["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}


def exported_series() -> dict[str, set[str]]:
    """Every series name /metrics serves (a counter's `_total`, a histogram's `_bucket`, `_sum`,
    `_count`) -> the labels it has, Prometheus' own (`instance`, `job`) included."""
    out: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, (Counter, Gauge, Histogram)):
            continue
        labels = {*metric._labelnames, "instance", "job"}
        if isinstance(metric, Counter):
            out[f"{metric._name}_total"] = labels
        elif isinstance(metric, Histogram):
            out.update({f"{metric._name}_bucket": labels | {"le"}, f"{metric._name}_sum": labels,
                        f"{metric._name}_count": labels})
        else:
            out[metric._name] = labels
    return out


def test_the_rules_their_tests_and_the_dashboard_name_only_series_the_workers_export():
    """A rule on a misspelt name (a gauge's name with `_total`, a histogram without `_bucket`) evaluates
    without error and never fires, and its promtool tests feed it the same wrong name: only this
    check sees it."""
    queries = [(f"alert {rule['alert']}", rule["expr"])
               for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    queries += [("alert test input", series["series"]) for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
                 for series in case.get("input_series") or []]
    queries += [(f"panel {panel['title']}", target["expr"])
                for panel in json.loads(dashboard.OUT.read_text())["panels"] for target in panel["targets"]]
    exported, bad = exported_series(), []
    for where, query in queries:
        for name, selector in re.findall(r"\b(blogstream_[a-z0-9_]+)(\{[^}]*\})?", query):
            if name not in exported:
                bad.append(f"{where}: {name} is not exported")
                continue
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector):
                if label not in exported[name]:
                    bad.append(f"{where}: {name} has no label {label}")
    assert len(queries) > 40 and bad == []
