from __future__ import annotations

import pytest

from simulators.config import DEFAULTS, ConfigError, config_from_env, merge_config
from simulators.window import SlidingWindow, format_duration


@pytest.mark.parametrize("secs,expected", [(0, "0s"), (0.12, "120ms"), (0.0001, "1ms"), (1, "1s"),
                                           (360, "6m0s"), (90.5, "1m30.5s"), (59.9834, "59.984s"),
                                           (3723, "1h2m3s")])
def test_format_duration(secs, expected):
    assert format_duration(secs) == expected


def test_window_admission_rule_and_retry_after():
    w = SlidingWindow()
    for t in (0.0, 1.0, 2.0):
        assert w.check(t, 10, 3).ok
        w.add(t)
    d = w.check(5.0, 10, 3)
    assert not d.ok and d.reason == "requests" and d.retry_after == pytest.approx(5.0)  # oldest expires at 10
    assert w.check(10.0, 10, 3).ok            # (0, 10] no longer contains t=0
    assert w.reset_requests(5.0, 10) == pytest.approx(7.0)


def test_token_window_and_settlement():
    w = SlidingWindow()
    a = w.add(0.0, 600)
    w.add(1.0, 300)
    d = w.check(2.0, 10, 100, 1000, 200)
    assert not d.ok and d.reason == "tokens" and d.retry_after == pytest.approx(8.0)
    a.tokens = 100                             # settle: unspent reservation returns to the pool
    assert w.check(2.0, 10, 100, 1000, 200).ok
    assert w.check(2.0, 10, 100, 1000, 1001).reason == "too_large"


def test_env_config(monkeypatch):
    cfg = config_from_env({"SIM_WINDOW_SECONDS": "5", "SIM_OPENAI_RPM": "7", "SIM_LATENCY_SCALE": "0.1",
                           "SIM_WIX_LATENCY_CREATE": "0.1,0.2", "SIM_REPLICATE_CREATE_RPM": "9",
                           "SIM_WIX_SITE_RPM": "11", "SIM_OPENAI_TPM": "1000"})
    assert cfg["window_seconds"] == 5 and cfg["openai"]["rpm"] == 7 and cfg["latency_scale"] == 0.1
    assert cfg["wix"]["latency_create"] == [0.1, 0.2] and cfg["replicate"]["create_rpm"] == 9
    assert cfg["wix"]["site_rpm"] == 11 and cfg["openai"]["tpm"] == 1000
    with pytest.raises(ConfigError):
        merge_config(DEFAULTS, {"openai": {"latency": [2, 1]}})
