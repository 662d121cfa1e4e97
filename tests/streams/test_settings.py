"""Settings are checked at start: every field has bounds, a bad value names its variable and what
it accepts, and the worker and the CLI stop with that one line instead of a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from unittest import mock

import annotated_types
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from streams.settings import ALIASES, EXIT_CONFIG, Settings, SettingsError, accepts, variable

ROOT = Path(__file__).resolve().parents[2]
FIELDS = Settings.model_fields

# Text fields: (good values, bad values). Every text field must be listed (see the test below).
TEXT = {
    "kafka_broker": (["kafka://k1:9092", "k1:9092", "kafka://a:1;kafka://b:2"], ["localhost", "kafka://a", "a:b"]),
    "topic_prefix": (["", "run1.", "my_app-2."], ["has space", "a/b", "ü"]),
    "app_id": (["blogstream", "run-1.x_y"], ["with space", "a/b"]),
    "web_bind": (["0.0.0.0", "127.0.0.1", "::", "worker-1"], ["two words", "a/b"]),
    "web_allowed_hosts": (["", "ops.example.com", "worker-1,ops.example.com"], ["two words", "a/b", "a,", "a:80"]),
    "data_dir": ([".faust", "/var/lib/blogstream"], []),  # empty means the default
    "database_url": (["postgresql://u:p@h:5432/db", "postgres://h/db"], ["mysql://h/db", "h:5432"]),
    "openai_base_url": (["https://api.openai.com/v1", "http://127.0.0.1:1/x"], ["api.openai.com", "ftp://x"]),
    "openai_api_key": (["sk-1"], []),
    "openai_model": (["gpt-4o"], []),
    "replicate_base_url": (["https://api.replicate.com"], ["replicate"]),
    "replicate_api_token": (["r8_x"], []),
    "replicate_model": (["black-forest-labs/flux-dev"], []),  # a model must have a price: tests/costs/test_prices.py
    "wix_base_url": (["https://www.wixapis.com"], ["www.wixapis.com"]),
    "intake_token": (["secret"], []),
    "admin_token": (["secret"], []),
    "worker_id": (["host-6066", "w.1_a"], ["two words", "a/b"]),
    "prices_file": ([str(ROOT / "streams" / "costs" / "prices.toml")], []),  # a bad file: tests/costs/test_prices.py
}


def load(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings from exactly these BLOGSTREAM_* / provider variables (the rest of the environment kept)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BLOGSTREAM_") and k not in ALIASES.values()}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return Settings.from_env(**overrides)


def bounds(name: str) -> dict[str, float]:
    return {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in FIELDS[name].metadata
            if isinstance(m, (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le))}


def samples(name: str) -> tuple[list[str], list[str]]:
    """(good, bad) values of a field as environment text, from its type and bounds."""
    kind = FIELDS[name].annotation
    if name in TEXT:
        return TEXT[name]
    if kind is bool:
        return ["true", "false", "True", "FALSE", "1", "0", "yes", "no", "on", "off"], ["ture", "2", "maybe"]
    if get_origin(kind) is Literal:
        options = list(get_args(kind))
        return options + [o.upper() for o in options], ["nope", "1"]
    b = bounds(name)
    low = b.get("ge", b.get("gt"))
    good = [str(FIELDS[name].default)]
    bad = ["abc", "1e3x", ""] if kind is int else ["abc", "nan", "inf", "-inf"]
    bad.remove("") if "" in bad else None  # empty is "use the default"
    if kind is int:
        good += [str(int(b["ge"]))] if "ge" in b else []
        bad += ["1.5"]
        bad += [str(int(b["ge"]) - 1)] if "ge" in b else []
        good += [str(int(b["le"]))] if "le" in b else []
        bad += [str(int(b["le"]) + 1)] if "le" in b else []
    else:
        good += [str(b["ge"])] if "ge" in b else [str(b["gt"] + 0.001)] if "gt" in b else []
        bad += [str(b["gt"])] if "gt" in b else [str(b["ge"] - 0.5)] if "ge" in b else []
        good += [str(b["le"])] if "le" in b else []
        bad += [str(b["le"] + 0.5)] if "le" in b else []
    assert low is not None, f"{name} has no lower bound"
    return good, bad


def test_every_field_has_bounds_or_a_listed_sample():
    for name, info in FIELDS.items():
        kind = info.annotation
        if kind in (int, float):
            b = bounds(name)
            assert "ge" in b or "gt" in b, f"{name}: a number without a lower bound"
        elif kind is str:
            assert name in TEXT, f"{name}: add good and bad samples to TEXT"
        else:
            assert kind is bool or get_origin(kind) is Literal, f"{name}: {kind}"


CASES = [(name, value, ok) for name in FIELDS for ok, values in zip((True, False), samples(name)) for value in values]


@pytest.mark.parametrize(("name", "value", "ok"), CASES, ids=[f"{n}={v!r}-{'ok' if ok else 'bad'}" for n, v, ok in CASES])
def test_each_value_is_accepted_or_refused_naming_the_variable(name, value, ok):
    var = f"BLOGSTREAM_{name.upper()}"
    env = {var: value}
    if name == "kafka_heartbeat_seconds":  # the rule between these two is tested below
        env["BLOGSTREAM_KAFKA_SESSION_TIMEOUT_SECONDS"] = "1000"
    if name == "kafka_session_timeout_seconds":
        env["BLOGSTREAM_KAFKA_HEARTBEAT_SECONDS"] = "0.0001"
    if name == "permit_wire_margin_seconds":  # the rule between it and the grace is tested below
        env["BLOGSTREAM_PERMIT_GRACE_SECONDS"] = "1e12"
    if ok:
        loaded = getattr(load(env), name)
        kind = FIELDS[name].annotation
        if kind in (int, float):
            assert loaded == kind(float(value))
        elif kind is str:
            assert loaded == value
        return
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert str(caught.value) == f"{var}={value!r} is not valid: expected {accepts(name)}"


@pytest.mark.parametrize(("env", "message"), [
    ({"BLOGSTREAM_BUDGET_PACING": "ture"}, "BLOGSTREAM_BUDGET_PACING='ture' is not valid: expected true or false"),
    ({"BLOGSTREAM_OPENAI_RPM": "-5"}, "BLOGSTREAM_OPENAI_RPM='-5' is not valid: expected a whole number >= 1"),
    ({"BLOGSTREAM_TOPIC_PARTITIONS": "abc"},
     "BLOGSTREAM_TOPIC_PARTITIONS='abc' is not valid: expected a whole number from 1 to 10000"),
    ({"BLOGSTREAM_WEB_PORT": "0"}, "BLOGSTREAM_WEB_PORT='0' is not valid: expected a whole number from 1 to 65535"),
    ({"BLOGSTREAM_PERMIT_LEASE_BELOW": "1.5"},
     "BLOGSTREAM_PERMIT_LEASE_BELOW='1.5' is not valid: expected a number from 0 to 1"),
    ({"BLOGSTREAM_EVENT_LOOP": "trio"}, "BLOGSTREAM_EVENT_LOOP='trio' is not valid: expected one of uvloop, asyncio"),
    ({"BLOGSTREAM_LOG_FORMAT": "xml"}, "BLOGSTREAM_LOG_FORMAT='xml' is not valid: expected one of text, json"),
    ({"BLOGSTREAM_HEARTBEAT_SECONDS": "0"}, "BLOGSTREAM_HEARTBEAT_SECONDS='0' is not valid: expected a number > 0"),
])
def test_the_messages_read_well(env, message):
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert str(caught.value) == message


def test_several_bad_values_are_all_named_in_one_line():
    with pytest.raises(SettingsError) as caught:
        load({"BLOGSTREAM_OPENAI_RPM": "0", "BLOGSTREAM_BUDGET_PACING": "ture"})
    assert "\n" not in str(caught.value)
    assert "BLOGSTREAM_OPENAI_RPM='0'" in str(caught.value) and "BLOGSTREAM_BUDGET_PACING='ture'" in str(caught.value)


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.sampled_from([n for n, f in FIELDS.items() if f.annotation is int]), st.integers(-10**6, 10**6))
def test_any_whole_number_is_accepted_exactly_within_the_bounds(name, value):
    b = bounds(name)
    inside = value >= b.get("ge", -10**9) and value <= b.get("le", 10**9)
    env = {f"BLOGSTREAM_{name.upper()}": str(value)}
    if inside:
        assert getattr(load(env), name) == value
    else:
        with pytest.raises(SettingsError, match=f"BLOGSTREAM_{name.upper()}='{value}' is not valid"):
            load(env)


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.sampled_from([n for n, f in FIELDS.items() if f.annotation is float and n != "kafka_heartbeat_seconds"]),
       st.floats(-1e4, 1e4, allow_nan=False))
def test_any_number_is_accepted_exactly_within_the_bounds(name, value):
    b = bounds(name)
    inside = (value > b["gt"] if "gt" in b else value >= b["ge"]) and value <= b.get("le", float("inf"))
    env = {f"BLOGSTREAM_{name.upper()}": repr(value)}
    if name == "kafka_session_timeout_seconds":
        env["BLOGSTREAM_KAFKA_HEARTBEAT_SECONDS"] = "1e-9"
        inside = inside and value > 1e-9
    if name == "permit_wire_margin_seconds":
        env["BLOGSTREAM_PERMIT_GRACE_SECONDS"] = "1e300"
    if inside:
        assert getattr(load(env), name) == value
    else:
        with pytest.raises(SettingsError):
            load(env)


def test_the_defaults_are_valid_and_empty_variables_mean_the_default():
    assert load({}) == load({f"BLOGSTREAM_{n.upper()}": "" for n in FIELDS})
    assert load({}).log_format == "text" and load({}).web_bind == "127.0.0.1"


def test_provider_variables_keep_their_names_and_win():
    s = load({"OPENAI_API_KEY": "sk-real", "BLOGSTREAM_OPENAI_API_KEY": "sk-other", "WIX_BASE_URL": "https://w.x"})
    assert (s.openai_api_key, s.wix_base_url) == ("sk-real", "https://w.x")
    assert load({"BLOGSTREAM_OPENAI_API_KEY": "sk-other"}).openai_api_key == "sk-other"
    with pytest.raises(SettingsError, match=r"^OPENAI_BASE_URL='ftp://x' is not valid: expected an http\(s\) URL$"):
        load({"OPENAI_BASE_URL": "ftp://x"})
    with mock.patch.dict(os.environ, {"REPLICATE_BASE_URL": "x"}):
        assert variable("replicate_base_url") == "REPLICATE_BASE_URL"


def test_the_wire_margin_is_at_most_a_third_of_the_grace_and_follows_a_small_grace_when_unset(monkeypatch):
    from streams.limiter import specs

    with pytest.raises(SettingsError, match=r"BLOGSTREAM_PERMIT_WIRE_MARGIN_SECONDS=0.5 is not valid: expected at most "
                                            r"a third of BLOGSTREAM_PERMIT_GRACE_SECONDS \(0.5\); raise the grace with "
                                            r"it, to 1.5 or more"):
        load({"BLOGSTREAM_PERMIT_WIRE_MARGIN_SECONDS": "0.5"})
    for env, margin in [({}, 0.1), ({"BLOGSTREAM_PERMIT_GRACE_SECONDS": "0.15"}, 0.05),
                        ({"BLOGSTREAM_PERMIT_WIRE_MARGIN_SECONDS": "0.5", "BLOGSTREAM_PERMIT_GRACE_SECONDS": "1.5"}, 0.5),
                        # a third exactly, whatever the float rounding (0.3 / 3 is 0.09999...)
                        ({"BLOGSTREAM_PERMIT_WIRE_MARGIN_SECONDS": "0.1", "BLOGSTREAM_PERMIT_GRACE_SECONDS": "0.3"}, 0.1)]:
        monkeypatch.setattr(specs, "settings", load(env))
        assert specs.wire_margin() == pytest.approx(margin)


def test_the_kafka_heartbeat_must_be_below_the_session_timeout():
    with pytest.raises(SettingsError, match="BLOGSTREAM_KAFKA_HEARTBEAT_SECONDS=10 is not valid: expected less than "
                                            r"BLOGSTREAM_KAFKA_SESSION_TIMEOUT_SECONDS \(10\)"):
        load({"BLOGSTREAM_KAFKA_HEARTBEAT_SECONDS": "10"})
    assert load({"BLOGSTREAM_KAFKA_HEARTBEAT_SECONDS": "3", "BLOGSTREAM_KAFKA_SESSION_TIMEOUT_SECONDS": "30"})


def test_overrides_are_checked_too_and_other_blogstream_variables_are_left_alone():
    assert load({}, openai_rpm=60, budget_pacing=False).openai_rpm == 60
    with pytest.raises(SettingsError, match="^setting openai_rpm=0 is not valid: expected a whole number >= 1$"):
        load({}, openai_rpm=0)
    with pytest.raises(SettingsError, match="no_such_thing is not a setting"):
        load({}, no_such_thing=1)
    assert load({"BLOGSTREAM_STACK_DIR": "/tmp/x", "BLOGSTREAM_WIX_API_KEY": "k", "BLOGSTREAM_DEBUG": "1"})


def test_settings_are_frozen_and_redacted_for_logs():
    s = load({"OPENAI_API_KEY": "sk-secret", "BLOGSTREAM_INTAKE_TOKEN": "tok",
              "BLOGSTREAM_DATABASE_URL": "postgresql://u:pw@db:5432/x"})
    with pytest.raises(Exception):
        s.openai_rpm = 1  # type: ignore[misc]
    shown = s.redacted()
    assert set(shown) == set(FIELDS)
    assert (shown["openai_api_key"], shown["intake_token"], shown["database_url"]) == (
        "sk-…", "***", "postgresql://***@db:5432/x")
    assert s.kafka_bootstrap == "127.0.0.1:" + s.kafka_broker.rsplit(":", 1)[1]


@pytest.mark.parametrize("broker", TEXT["kafka_broker"][0])
def test_plain_kafka_clients_reach_every_broker_the_worker_reaches(broker):
    """kafka_bootstrap (topic creation at start, the consumer-lag export, `blogstream topics`) named the
    first broker only: with it down, a worker whose Faust could use the others did not start, and the
    lag every alert reads went stale on every worker."""
    from aiokafka.conn import collect_hosts
    from faust.utils.urls import urllist

    s = Settings.from_env(kafka_broker=broker)
    faust_brokers = [(url.host, url.port) for url in urllist(s.kafka_broker, default_scheme="kafka")]
    assert [(host, port) for host, port, _ in collect_hosts(s.kafka_bootstrap, randomize=False)] == faust_brokers


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [
    [str(ROOT / ".venv/bin/faust"), "-A", "streams", "worker", "-l", "info", "--web-port", "1"],
    [str(ROOT / ".venv/bin/blogstream"), "sites", "list"],
    [sys.executable, "-m", "streams.cli", "health"],
], ids=["worker", "cli", "cli-module"])
def test_a_bad_value_stops_the_worker_and_the_cli_with_one_line(command):
    done = _run(command, BLOGSTREAM_BUDGET_PACING="ture")
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    assert done.stderr == "blogstream: error: BLOGSTREAM_BUDGET_PACING='ture' is not valid: expected true or false\n"
