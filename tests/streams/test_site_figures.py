"""Per-site figures: each site's share of the global budgets (coordinator stats, Prometheus) and the
per-site table of `blogstream health`. Without Kafka: the coordinator's book is driven directly,
and the health command gets a database and a worker that answer from memory."""
from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner

from streams import metrics
from streams.cli import cli, connect
from streams.cli.health import site_table
from streams.limiter.book import Ask
from streams.limiter.coordinator import Coordinator
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS, wix_requests
from streams.monitoring import publish_site_figures


def grant(coordinator: Coordinator, site: str, needs: dict[str, float], now: float, *, slot: bool = False) -> None:
    n = len(coordinator.book.waiting) + sum(len(r.entries) for r in coordinator.book.rates.values())
    coordinator.book.add_ask(Ask(f"ask-{site}-{n}", site, f"req-{site}-{n}", needs, 20 if slot else None, 1.0, now, 0))
    assert coordinator.book.grant_ready(now)


def sample(name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_the_coordinators_stats_split_each_global_budget_by_site():
    c = Coordinator()
    now = 1000.0
    for i in range(3):
        grant(c, "big", {OPENAI_REQUESTS: 1, OPENAI_TOKENS: 2000}, now + i, slot=True)
    grant(c, "small", {OPENAI_REQUESTS: 1, OPENAI_TOKENS: 1000}, now + 3, slot=True)
    grant(c, "small", {REPLICATE_REQUESTS: 1}, now + 4)
    grant(c, "small", {wix_requests("small"): 1}, now + 5)
    stats = c.stats(now + 6)
    assert stats["shares"] == {
        OPENAI_REQUESTS: {"big": 3, "small": 1},
        OPENAI_TOKENS: {"big": 6000, "small": 1000},
        REPLICATE_REQUESTS: {"small": 1},
    }  # Wix budgets are per site already: no shares
    assert stats["slots"] == {"big": 3, "small": 1}
    assert json.loads(json.dumps(stats))["shares"] == stats["shares"]  # what /api/limiter serves
    shares = metrics.site_budget_shares(stats)
    assert shares[OPENAI_REQUESTS]["big"] == (3, pytest.approx(0.75))
    assert shares[OPENAI_TOKENS]["small"] == (1000, pytest.approx(1000 / 7000))
    assert shares[REPLICATE_REQUESTS] == {"small": (1, 1.0)}


def test_share_gauges_follow_the_sites_in_the_window_and_drop_the_others():
    c = Coordinator()
    now = 2000.0
    grant(c, "g-a", {OPENAI_REQUESTS: 1, OPENAI_TOKENS: 300}, now, slot=True)
    grant(c, "g-b", {OPENAI_REQUESTS: 1, OPENAI_TOKENS: 100}, now, slot=True)
    publish_site_figures(c.stats(now + 1))
    assert sample("blogstream_site_budget_share_ratio", budget=OPENAI_REQUESTS, site="g-a") == pytest.approx(0.5)
    assert sample("blogstream_site_budget_share_ratio", budget=OPENAI_TOKENS, site="g-a") == pytest.approx(0.75)
    assert sample("blogstream_site_budget_used", budget=OPENAI_TOKENS, site="g-b") == 100
    assert sample("blogstream_site_in_flight", site="g-b") == 1
    # g-b's request finishes and its grants leave the window; g-a starts another one.
    c.book.release_slot("g-b", next(iter(c.book.slot("g-b").holders)))
    later = now + c.book.rate(OPENAI_REQUESTS).window + 1
    grant(c, "g-a", {OPENAI_REQUESTS: 1, OPENAI_TOKENS: 300}, later, slot=True)
    publish_site_figures(c.stats(later))
    assert sample("blogstream_site_budget_share_ratio", budget=OPENAI_REQUESTS, site="g-a") == 1.0
    assert sample("blogstream_site_budget_share_ratio", budget=OPENAI_REQUESTS, site="g-b") is None
    assert sample("blogstream_site_budget_used", budget=OPENAI_TOKENS, site="g-b") is None
    assert sample("blogstream_site_in_flight", site="g-b") is None  # not left at its last value
    assert sample("blogstream_site_in_flight", site="g-a") == 2


LIMITER = {
    OPENAI_REQUESTS: {"used_in_window": 400}, OPENAI_TOKENS: {"used_in_window": 1_000_000},
    REPLICATE_REQUESTS: {"used_in_window": 100},
    "shares": {
        OPENAI_REQUESTS: {"shop-1": 300, "shop-2": 100},
        OPENAI_TOKENS: {"shop-1": 750_000, "shop-2": 250_000},
        REPLICATE_REQUESTS: {"shop-1": 100},
    },
    "slots": {"shop-1": 20, "shop-2": 5}, "window_seconds": 60,
}


def test_the_site_table_puts_the_busiest_first_and_shows_units_and_shares():
    lines = site_table({"shop-1": 200, "shop-2": 8, "shop-3": 3}, LIMITER, top=2)
    assert lines[0].startswith("Sites (queued: PENDING in Postgres; in flight, and units (share)")
    assert "last 60 s" in lines[0]
    assert lines[1].split() == ["site", "queued", "in", "flight", OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS]
    assert lines[2].split() == ["shop-1", "200", "20", "300", "(75.0%)", "750,000", "(75.0%)", "100", "(100.0%)"]
    assert lines[3].split() == ["shop-2", "8", "5", "100", "(25.0%)", "250,000", "(25.0%)", "-"]
    assert lines[4].strip() == "... and 1 more site(s) (--sites 0 lists all)"
    assert len({len(line) for line in lines[1:4]}) == 1  # aligned columns


def test_the_site_table_without_a_worker_says_so_and_shows_what_postgres_knows():
    lines = site_table({"shop-1": 200, "shop-2": 8}, None, why_not="no worker answered at http://w (ConnectError)")
    assert lines[0] == ("Sites: in flight and budget shares unknown, no worker answered at http://w (ConnectError); "
                        "queued from Postgres:")
    assert [line.split() for line in lines[1:]] == [["site", "queued"], ["shop-1", "200"], ["shop-2", "8"]]
    assert site_table({}, None, why_not="x") == ["Sites: nothing queued in Postgres; in flight and budget shares unknown, x"]


class HealthDb:
    async def health(self):
        return SimpleNamespace(queue_size=208, errors_last_hour=3, completed_last_hour=1800, blogs_per_minute=30.0)

    async def pending_by_site(self):
        return {"shop-1": 200, "shop-2": 8}


def run_health(monkeypatch, capsys, answers: dict[str, object]) -> list[str]:
    async def with_db(fn):
        return await fn(HealthDb())

    def get(url: str, timeout: float):
        path = "/" + url.split("/", 3)[3]
        if path not in answers:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=answers[path])

    monkeypatch.setattr(connect, "with_db", with_db)
    monkeypatch.setattr(httpx, "get", get)
    result = CliRunner().invoke(cli, ["health", "--worker", "http://w"])
    assert result.exit_code == (0 if "/api/limiter" in answers else 2), result.output  # 2: no worker
    return result.output.splitlines()


SEED_LINES = [
    "=== Blog Generation System Health ===",
    "Queue Size: 208",
    'OpenAI Rate Limiter: {"queueLength": 0}',
    'Replicate Rate Limiter: {"queueLength": 1}',
    "Errors (last hour): 3",
    "Completed (last hour): 1800",
    "Rate: 30.0 blogs/min",
    "Pending by site: shop-1=200, shop-2=8",
]


def test_health_prints_the_seed_lines_then_the_site_table(monkeypatch, capsys):
    out = run_health(monkeypatch, capsys, {
        "/api/rate-limiter/stats": {"queueLength": 0}, "/api/replicate-rate-limiter/stats": {"queueLength": 1},
        "/api/limiter": LIMITER,
    })
    assert out[:8] == SEED_LINES
    assert out[8].startswith("Sites (queued") and out[10].split()[:3] == ["shop-1", "200", "20"]


def test_health_without_a_worker_prints_what_postgres_knows(monkeypatch, capsys):
    out = run_health(monkeypatch, capsys, {})
    assert out[2].startswith('OpenAI Rate Limiter: {"error": "no worker answered at http://w')
    assert out[8] == "Sites: in flight and budget shares unknown, no worker answered at http://w (ConnectError); " \
                     "queued from Postgres:"
    assert out[10].split() == ["shop-1", "200"]
