"""`blogstream health`: the verdict (exit 0 healthy, 1 degraded, 2 down) from the seed's thresholds,
and --json, with a database and a worker that answer from memory."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from streams.cli import connect
from streams.cli.health import Answer, Report

LIMITER = {
    "openai_requests": {"used_in_window": 100, "limit": 450}, "openai_tokens": {"used_in_window": 1000, "limit": 450_000},
    "replicate_requests": {"used_in_window": 10, "limit": 450},
    "shares": {"openai_requests": {"shop-1": 100}}, "slots": {"shop-1": 3}, "window_seconds": 60,
}
SEED = {"queueLength": 0, "rpmUsagePercent": 22.2}


def figures(queue=10, errors=1, completed=99):
    return SimpleNamespace(queue_size=queue, errors_last_hour=errors, completed_last_hour=completed,
                           blogs_per_minute=completed / 60,
                           as_dict=lambda: {"queue_size": queue, "errors_last_hour": errors,
                                            "completed_last_hour": completed, "blogs_per_minute": completed / 60})


def report(**changes) -> Report:
    r = Report("http://w", figures=figures(), pending={"shop-1": 10},
               seed={"/api/rate-limiter/stats": Answer(SEED, True), "/api/replicate-rate-limiter/stats": Answer(SEED, True)},
               limiter=Answer(LIMITER, True))
    for k, v in changes.items():
        setattr(r, k, v)
    return r


def budget(name: str, used: float) -> dict:
    return {**LIMITER, name: {"used_in_window": used, "limit": 450}}


@pytest.mark.parametrize(("changes", "status", "problem"), [
    ({}, "healthy", None),
    ({"figures": figures(errors=6, completed=94)}, "degraded", "FAILED 6.0% of the last hour's outcomes (above 5%)"),
    ({"figures": figures(errors=5, completed=95)}, "healthy", None),  # 5% is the limit, not above it
    ({"figures": figures(errors=0, completed=0)}, "healthy", None),
    ({"figures": figures(queue=1001)}, "degraded", "1,001 PENDING (above 1,000)"),
    ({"figures": figures(queue=5001)}, "degraded", "5,001 PENDING (critical, above 1,000)"),
    ({"limiter": Answer(budget("openai_requests", 406), True)}, "degraded",
     "budget openai_requests 90.2% used (above 90%)"),
    ({"limiter": Answer(budget("replicate_requests", 405), True)}, "healthy", None),
    ({"limiter": Answer(None, True, "the worker at http://w answered 503: moving")}, "degraded",
     "no limiter coordinator answering (the worker at http://w answered 503: moving)"),
    ({"figures": None, "database_error": "the database is unreachable (x)"}, "down",
     "database: the database is unreachable (x)"),
    ({"limiter": Answer(None, False, "no worker answered at http://w (ConnectError)"),
      "seed": {"/api/rate-limiter/stats": Answer(None, False, "no worker")}}, "down",
     "worker: no worker answered at http://w (ConnectError)"),
])
def test_the_verdict_follows_the_seeds_thresholds(changes, status, problem):
    found, problems = report(**changes).assess()
    assert found == status
    assert problems == ([problem] if problem else [])


def test_down_also_lists_what_is_degraded():
    status, problems = report(figures=figures(queue=2000), limiter=Answer(None, False, "no worker answered"),
                              seed={}).assess()
    assert status == "down" and problems == ["worker: no worker answered", "2,000 PENDING (above 1,000)"]


@pytest.fixture
def health_db(monkeypatch):
    state = {"figures": figures(), "pending": {"shop-1": 10, "shop-2": 2}}

    class Db:
        async def health(self):
            return state["figures"]

        async def pending_by_site(self):
            return state["pending"]

    async def with_db(fn):
        return await fn(Db())

    monkeypatch.setattr(connect, "with_db", with_db)
    return state


def serve(worker, limiter=LIMITER):
    worker.routes.update({("GET", "/api/rate-limiter/stats"): (200, SEED),
                          ("GET", "/api/replicate-rate-limiter/stats"): (200, SEED),
                          ("GET", "/api/limiter"): (200, limiter) if limiter else (503, {"error": "moving"})})


@pytest.mark.parametrize(("limiter", "queue", "code", "status"), [
    (LIMITER, 10, 0, "healthy"), (LIMITER, 4000, 1, "degraded"), (None, 10, 1, "degraded")])
def test_exit_codes_and_the_status_line(run, worker, health_db, limiter, queue, code, status):
    serve(worker, limiter)
    health_db["figures"] = figures(queue=queue)
    result = run("health", "--worker", "http://w")
    assert result.exit_code == code
    assert result.stdout.splitlines()[-1].startswith(f"Status: {status}")


def test_json_is_the_only_thing_on_stdout(run, worker, health_db):
    serve(worker)
    result = run("health", "--worker", "http://w", "--json", "--sites", "1")
    answer = json.loads(result.stdout)
    assert result.exit_code == 0 and answer["status"] == "healthy" and answer["problems"] == []
    assert answer["database"]["queue_size"] == 10 and answer["database"]["failed_rate"] == pytest.approx(0.01)
    assert answer["rate_limiter"] == SEED and answer["limiter"]["slots"] == {"shop-1": 3}
    assert answer["pending_by_site"] == {"shop-1": 10, "shop-2": 2}
    assert answer["sites"] == [{"site": "shop-1", "queued": 10, "in_flight": 3,
                                "budgets": {"openai_requests": {"units": 100, "share": 1.0}}}]


def test_json_without_a_worker_says_down(run, worker, health_db):
    worker.down = True
    result = run("health", "--worker", "http://w", "--json")
    answer = json.loads(result.stdout)
    assert result.exit_code == 2 and answer["status"] == "down"
    assert answer["limiter"] is None and answer["rate_limiter"]["error"].startswith("no worker answered at http://w")
    assert answer["sites"] == [{"site": "shop-1", "queued": 10}, {"site": "shop-2", "queued": 2}]
