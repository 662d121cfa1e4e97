"""Tokens binding against a provider that never gives unused reserved tokens back.

The simulator charges each OpenAI call its admission estimate (prompt characters
/ 4 + max_tokens, here off by up to 1 % either way) for its whole window, and
keeps it counted after the answer (`refund_unused_tokens: false`). Nobody tells
the workers: the limiter must learn it from the answers' x-ratelimit-remaining-tokens
and stop over-granting. Before it did, such a backlog drew a 429 for one call in seven.
"""
from __future__ import annotations

import asyncio
import time

from stack.bench_limiter import WORKER_ENV
from stack.harness import summarize

W = 10.0
TPM = 24_000  # about ten of these articles per window: tokens bind, requests (200) do not


async def test_tokens_kept_counted_are_learned_and_nothing_is_refused_after_the_first_window(
        pipeline, sim, outcomes, monkeypatch):
    for key, value in WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    sim.configure({
        "window_seconds": W, "latency_scale": 0.3,
        "openai": {"rpm": 200, "tpm": TPM, "refund_unused_tokens": False, "estimate_error": 0.01,
                   "external_rpm": 0, "error_rate": 0.0},
        "replicate": {"create_rpm": 1000, "external_rpm": 0, "error_rate": 0.0},
        "wix": {"site_rpm": 1000, "external_rpm": 0, "error_rate": 0.0},
    })
    pipeline.settings = {"budget_window_seconds": W, "permit_grace_seconds": 0.3, "openai_rpm": 200,
                         "openai_tpm": TPM, "replicate_rpm": 1000, "wix_site_rpm": 1000, "heartbeat_seconds": 2}
    sites = ["big", "small-1", "small-2"]
    await outcomes.add_sites(sites)
    workers = [pipeline.start_worker() for _ in range(2)]
    await pipeline.wait_for_topics()
    await pipeline.wait_ready()
    requests = [pipeline.request("big", n, target_words=1000) for n in range(40)]
    requests += [pipeline.request(site, n, target_words=1000) for n in range(10) for site in sites[1:]]
    await pipeline.submit(requests)

    # The first window is for learning: wait until the first call is one window + grace old.
    deadline = time.time() + 120
    while not sim.events("openai"):
        assert time.time() < deadline, "no OpenAI call was made"
        await asyncio.sleep(0.5)
    first = min(e[0] for e in sim.events("openai"))
    await asyncio.sleep(max(0.0, first + W + 0.5 - time.time()))
    learning = sim.ledger()["openai"]["rejected_429"]

    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=240, workers=workers)
    assert summarize(rows) == {"DONE": len(requests)}
    ledger = sim.ledger()["openai"]
    assert ledger["limits"]["refund_unused_tokens"] is False
    assert ledger["rejected_429"] == learning, \
        f"{ledger['rejected_429'] - learning} 429s after the first window ({learning} while learning)"
    # The budget was really contested (or the test proves nothing), and never over the limit.
    assert TPM * 0.9 <= ledger["max_tokens_in_window_enforced"] <= TPM
    logs = "".join(w.log_text() for w in workers)
    assert "unused reserved tokens are kept counted" in logs, {k: ledger[k] for k in ("admitted", "tokens_charged_total", "tokens_settled_total", "max_tokens_in_window_enforced")}
    assert "unused reserved tokens are given back" not in logs
