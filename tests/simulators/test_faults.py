"""Injected faults every provider can answer with: a share of 5xx (error_rate), of timeouts (timeout_rate) and of answers cut off (cut_rate)."""
from __future__ import annotations

import time

import httpx
import pytest

CALLS = {
    "openai": ("/openai/v1/chat/completions", {"Authorization": "Bearer sk-test"},
               {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
    "replicate": ("/replicate/v1/models/black-forest-labs/flux-schnell/predictions", {"Authorization": "Bearer r8_test"},
                  {"input": {"prompt": "a cat"}}),
    "wix": ("/wix/site-media/v1/files/import", {"Authorization": "k", "wix-site-id": "site-a"},
            {"url": "https://example.com/a.png", "mediaType": "IMAGE"}),
}


@pytest.mark.parametrize("provider", sorted(CALLS))
def test_a_timed_out_call_gets_no_answer_in_time_and_never_reaches_the_provider(sim, provider):
    path, headers, body = CALLS[provider]
    sim.configure({provider: {"timeout_rate": 1.0, "timeout_seconds": 1.0}})
    with httpx.Client(base_url=sim.base_url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post(path, headers=headers, json=body)
    with httpx.Client(base_url=sim.base_url, timeout=5) as http:  # a patient client sees a 504 after it
        started = time.monotonic()
        assert http.post(path, headers=headers, json=body).status_code == 504
        assert time.monotonic() - started >= 1.0
    led = sim.ledger()[provider]
    assert led["timeouts"] == 2 and led["admitted"] == 0 and led["calls"] == 0
    sim.configure({provider: {"timeout_rate": 0.0}})
    with httpx.Client(base_url=sim.base_url, timeout=5) as http:
        assert http.post(path, headers=headers, json=body).status_code in (200, 201)
    assert sim.ledger()[provider]["admitted"] == 1


def test_a_share_of_calls_fail_with_5xx_or_time_out():
    from simulators.config import DEFAULTS, merge_config
    from simulators.server import SimulatorServer

    patch = {"latency_scale": 0.0, "seed": 3, "wix": {"error_rate": 0.1, "timeout_rate": 0.1, "timeout_seconds": 0.2}}
    path, headers, body = CALLS["wix"]
    with SimulatorServer(config=merge_config(DEFAULTS, patch)) as sim, \
            httpx.Client(base_url=sim.base_url, timeout=0.1) as http:
        statuses = []
        for _ in range(150):
            try:
                statuses.append(http.post(path, headers=headers, json=body).status_code)
            except httpx.ReadTimeout:
                statuses.append("timeout")
        led = sim.ledger()["wix"]
    assert 5 <= statuses.count("timeout") <= 30 and led["timeouts"] == statuses.count("timeout")
    assert 5 <= led["errors_5xx"] <= 30 and sum(s in (500, 503) for s in statuses) == led["errors_5xx"]
    assert statuses.count(200) == led["admitted"] - led["errors_5xx"]


@pytest.mark.parametrize("provider", sorted(CALLS))
def test_a_cut_answer_is_a_call_done_whose_answer_ends_half_way(sim, provider):
    """cut_rate: the provider does the call (admitted, counted) and the caller gets half of the answer's body
    under the whole body's Content-Length before the connection closes."""
    path, headers, body = CALLS[provider]
    sim.configure({provider: {"cut_rate": 1.0}})
    with httpx.Client(base_url=sim.base_url, timeout=5) as http, pytest.raises(httpx.RemoteProtocolError):
        http.post(path, headers=headers, json=body)
    led = sim.ledger()[provider]
    assert led["answers_cut"] == 1 and led["admitted"] == 1
    sim.configure({provider: {"cut_rate": 0.0}})
    with httpx.Client(base_url=sim.base_url, timeout=5) as http:
        assert http.post(path, headers=headers, json=body).status_code in (200, 201)
    assert sim.ledger()[provider]["admitted"] == 2 and sim.ledger()[provider]["answers_cut"] == 1
