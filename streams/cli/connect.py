"""What the commands talk to: the settings, a worker's HTTP API, Postgres.

The settings are read when a command runs, not when the CLI is imported, so a bad
BLOGSTREAM_* value is reported as one line (streams.settings.SettingsError).
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Awaitable, Callable, TypeVar

from streams.cli.output import CliError

T = TypeVar("T")

START_WORKER = "start one (faust -A streams worker -l info) or pass --worker URL"
START_DATABASE = "start it (make stack-up) or check BLOGSTREAM_DATABASE_URL"


def settings() -> Any:
    from streams.settings import settings as current

    return current


def worker_url(given: str | None) -> str:
    """The worker's web address: --worker, else this machine's BLOGSTREAM_WEB_PORT. One without
    http(s):// can never be reached: said at once, not as "no worker answered"."""
    if given is not None and not re.match(r"^https?://[^\s/]+", given):
        raise CliError(f"--worker {given!r} is not a web address", "give it as http://HOST:PORT", exit_code=2)
    return (given or f"http://127.0.0.1:{settings().web_port}").rstrip("/")


def intake_headers() -> dict[str, str]:
    """The intake token, when one is set (BLOGSTREAM_INTAKE_TOKEN)."""
    token = settings().intake_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def admin_headers() -> dict[str, str]:
    """The admin token (BLOGSTREAM_ADMIN_TOKEN, else the intake token) for site controls, retries, limiter figures."""
    token = settings().admin_token or settings().intake_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def json_or_empty(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def error_text(response: Any) -> str:
    return str(json_or_empty(response).get("error") or f"HTTP {response.status_code}")


def no_worker(worker: str, exc: BaseException) -> CliError:
    return CliError(f"no worker answered at {worker} ({type(exc).__name__})", START_WORKER)


async def with_db(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(db)` with a small connection pool to BLOGSTREAM_DATABASE_URL."""
    from store.database import Database

    db = Database(settings().database_url, min_size=1, max_size=2)
    await db.start()
    try:
        return await fn(db)
    finally:
        await db.close()


MIGRATE = ("run the migrations: .venv/bin/alembic upgrade head in a checkout, "
           "docker compose -f docker-compose.kafka.yml up migrate with compose")


def database_problem(exc: BaseException) -> tuple[str, str] | None:
    """Why the database could not be used and what to do (None: not a database problem)."""
    import asyncpg

    from store.database import DatabaseError

    if isinstance(exc, DatabaseError):
        return f"the database is unreachable ({exc})", START_DATABASE
    if isinstance(exc, asyncpg.UndefinedTableError):
        return f"the database has no blogstream tables ({exc})", MIGRATE
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)):
        return f"the database failed ({type(exc).__name__}: {exc})", START_DATABASE
    return None


def run_db(fn: Callable[[Any], Awaitable[T]]) -> T:
    """`with_db(fn)` to completion; a database that cannot be used is a one-line error."""
    try:
        return asyncio.run(with_db(fn))
    except Exception as exc:
        problem = database_problem(exc)
        if problem is None:
            raise
        raise CliError(*problem) from None
