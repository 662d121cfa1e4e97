"""Fixtures for the `blogstream` command tests: a worker that answers from memory (httpx's
MockTransport under every client the CLI makes), and the real `blogstream_test` database with
rows and sites of this run only (ids start with RUN; teardown deletes them)."""
from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
import pytest
from click.testing import CliRunner

from streams.cli import cli, connect
from streams.settings import Settings

DSN = os.environ.get(
    "BLOGSTREAM_TEST_DATABASE_URL",
    f"postgresql://blogstream:blogstream@127.0.0.1:{os.environ.get('PG_PORT', '55432')}/blogstream_test",
)
RUN = f"clitest{uuid.uuid4().hex[:8]}"


def uid(prefix: str = "r") -> str:
    return f"{RUN}-{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class FakeWorker:
    """Answers the worker routes the CLI calls; `routes` maps (method, path) to (status, json) or a callable."""

    routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    down: bool = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        answer = self.routes.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(404, json={"error": f"no route {request.url.path}"})
        if callable(answer):
            answer = answer(request, body)
        status, payload = answer
        return httpx.Response(status, json=payload)


@pytest.fixture
def worker(monkeypatch) -> FakeWorker:
    fake = FakeWorker()
    transport = httpx.MockTransport(fake.handle)
    real_client, real_async = httpx.Client, httpx.AsyncClient
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=transport, **kw))
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_async(transport=transport, **kw))

    def get(url: str, timeout: float = 5.0) -> httpx.Response:
        with real_client(transport=transport, timeout=timeout) as client:
            return client.get(url)

    monkeypatch.setattr(httpx, "get", get)
    return fake


@pytest.fixture
def use_settings(monkeypatch) -> Callable[..., Settings]:
    """Make the commands run with these settings (on top of the test database)."""
    def use(**overrides: Any) -> Settings:
        chosen = Settings.from_env(**{"database_url": DSN, **overrides})
        monkeypatch.setattr(connect, "settings", lambda: chosen)
        return chosen

    use()
    return use


@pytest.fixture
def run(use_settings):
    """Invoke `blogstream ARGS` in-process; returns click's Result (stdout and stderr apart)."""
    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def on_db(fn: Callable[[Any], Any]) -> Any:
    from store.database import Database

    async def go() -> Any:
        async with Database(DSN, min_size=1, max_size=1) as db:
            return await fn(db)

    return asyncio.run(go())


@pytest.fixture(scope="session", autouse=True)
def _delete_this_runs_rows():
    yield
    try:
        on_db(lambda db: db.pool.execute(
            "DELETE FROM stage_outputs WHERE request_id LIKE $1;", f"{RUN}%"))
        on_db(lambda db: db.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}%"))
        on_db(lambda db: db.pool.execute("DELETE FROM sites WHERE site_id LIKE $1", f"{RUN}%"))
    except Exception:  # the database tests were skipped or it went away: nothing of ours is there
        pass


def failed_rows(site: str, *, ages_minutes: list[float]) -> list[str]:
    """FAILED requests of `site`, created that many minutes ago; returns their ids."""
    from datetime import timedelta

    from store.outcomes import OutcomeRow

    now = datetime.now(timezone.utc)
    rows = [OutcomeRow(uid("f"), site, "FAILED", "failed", 3, now - timedelta(minutes=m), error="boom")
            for m in ages_minutes]
    on_db(lambda db: db.upsert_outcomes(rows))
    return [r.request_id for r in rows]
