"""The Postgres pool for blogstream (asyncpg), and ``Database``: one object per process.

``Database`` is the pool (connect/close, the json codec) with three sets of methods
mixed in, each in the module named for what it holds:

* ``store.outcomes.Outcomes`` - the outcome sink (forward-only upserts into
  ``blog_generations``) and the reads behind the health endpoint and the intake API;
* ``store.sites.SiteRegistry`` - per-site settings and the site controls
  (``store.sites.SiteCache`` serves them with a short TTL);
* ``store.effects.EffectLedger`` - ``stage_outputs``: paid or visible effects once per
  (request, stage).

Secrets: the DSN password never appears in an error raised here.
"""
from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import unquote, urlsplit

import asyncpg

from .batches import BatchLanes
from .effects import EffectLedger
from .outcomes import Outcomes, dump_json
from .sites import SiteRegistry

__all__ = [
    "OUTAGES", "SCHEMA_REVISIONS", "Database", "DatabaseError", "SchemaBehind", "ServerEndedConnections", "mask_dsn",
]


# --- errors and secrets ------------------------------------------------------------


class DatabaseError(RuntimeError):
    """Raised by the connector itself (not by asyncpg); its message is free of secrets."""


def mask_dsn(dsn: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (also ?password=)."""
    # Greedy up to the last "@": a password may itself contain "@" or "/" (over-masking an
    # odd query string is harmless, under-masking a password is not).
    masked = re.sub(r"(://[^:/@?#]*):.*@", r"\1:***@", dsn)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", masked)


def _scrub(text: str, dsn: str) -> str:
    """Remove the DSN and its password from a message we did not write (driver errors)."""
    text = text.replace(dsn, mask_dsn(dsn))
    try:
        password = urlsplit(dsn).password
    except ValueError:  # unparsable DSN: the regex below still masks user:pw@ forms
        password = None
    for secret in {password, unquote(password) if password else None} - {None, ""}:
        text = text.replace(secret, "***")  # type: ignore[arg-type]
    return mask_dsn(text)


# The schema this code reads and writes: every migration of migrations/versions, oldest first
# (tests/store/test_migrations.py holds the two together).
SCHEMA_REVISIONS = ("0001", "0002", "0003", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0012", "0013")


class SchemaBehind(DatabaseError):
    """The database's schema is older than this code's: its migrations have not run (yet)."""


# What a Postgres outage raises (not down, restarting, out of connections, unreachable):
# a statement that met one may work when tried again; values Postgres refuses never will.
OUTAGES = (
    OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, DatabaseError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
)


# --- the database ----------------------------------------------------------------------


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json/jsonb in and out as Python objects (asyncpg's default is str).
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=dump_json, decoder=json.loads, format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool: nothing more than asyncpg's own check.

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` after every statement: a second round trip for each one. We hold no session
    state to undo (no session advisory locks, cursors, LISTEN or SET; the advisory locks of
    store/parked.py end with their transaction), and asyncpg still rolls back a connection
    released inside a transaction before calling this.
    """


class ServerEndedConnections:
    """The pool's statements, never left to fail on a connection the server has already ended.

    When Postgres stops (a fast shutdown) or a backend is terminated, the server
    sends each idle connection a FATAL message and closes it. asyncpg 0.32 reads
    that message as a protocol error and marks the connection busy, but keeps it
    in the pool until it also reads the end of the stream; a statement given that
    connection meanwhile fails with `InternalClientError: cannot switch to state
    12; another operation (2) is in progress` before anything is sent (seen once
    per pooled connection at the start of every Postgres outage). Such a
    connection is closed here and the statement goes to another one: while the
    server is really down, that one fails with an error that says so
    (connection refused, the database system is shutting down).

    Everything else (acquire, close, ...) is the asyncpg pool's own.
    """

    def __init__(self, pool: asyncpg.Pool, max_size: int) -> None:
        self._pool = pool
        self._tries = max_size + 1  # at worst, every pooled connection was ended at once

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        return await self._run("execute", query, *args, timeout=timeout)

    async def executemany(self, command: str, args: object, *, timeout: float | None = None) -> None:
        return await self._run("executemany", command, args, timeout=timeout)

    async def fetch(self, query: str, *args: object, timeout: float | None = None) -> list:
        return await self._run("fetch", query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: object, column: int = 0, timeout: float | None = None) -> object:
        return await self._run("fetchval", query, *args, column=column, timeout=timeout)

    async def fetchrow(self, query: str, *args: object, timeout: float | None = None) -> object:
        return await self._run("fetchrow", query, *args, timeout=timeout)

    async def _run(self, method: str, *args: object, **kwargs: object) -> object:
        for attempt in range(1, self._tries + 1):
            async with self._pool.acquire() as conn:
                try:
                    return await getattr(conn, method)(*args, **kwargs)
                except asyncpg.InternalClientError as exc:
                    if not ended_by_server(exc) or attempt == self._tries:
                        raise
                    conn.terminate()  # nothing was sent on it: the statement goes to another connection
        raise AssertionError("unreachable")


def ended_by_server(exc: BaseException) -> bool:
    """asyncpg's error for a statement given a connection whose server-side end it had not noticed yet."""
    return isinstance(exc, asyncpg.InternalClientError) and "another operation (2) is in progress" in str(exc)


class Database(Outcomes, SiteRegistry, EffectLedger, BatchLanes):
    """One asyncpg pool per process; every method is a single short query or statement."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 30.0,
        application_name: str = "blogstream",
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._application_name = application_name
        self._pool: ServerEndedConnections | None = None

    def __repr__(self) -> str:
        return f"Database({mask_dsn(self._dsn)!r}, started={self._pool is not None})"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                init=_init_connection,
                reset=_keep_session,
                server_settings={"application_name": self._application_name},
            )
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            # The driver's message may quote the DSN; ours names the database without the
            # password. `from None`: the original (unscrubbed) error is not chained into logs.
            raise DatabaseError(
                f"cannot connect to {mask_dsn(self._dsn)}: {type(exc).__name__}: {_scrub(str(exc), self._dsn)}"
            ) from None
        self._pool = ServerEndedConnections(pool, self._max_size)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def schema_revision(self) -> str | None:
        """The revision alembic recorded last (None: the database was never migrated)."""
        try:
            return await self.pool.fetchval("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            return None

    async def check_schema(self) -> str | None:
        """Raise SchemaBehind when the schema is older than this code's; its revision when it is newer.

        A newer one (migrated for a newer release first, as a rolling upgrade does) is used as it is:
        migrations only add. None: the schema is this code's.
        """
        revision = await self.schema_revision()
        head = SCHEMA_REVISIONS[-1]
        if revision == head:
            return None
        if revision is None or revision in SCHEMA_REVISIONS:
            raise SchemaBehind(
                f"the database {mask_dsn(self._dsn)} is at schema revision {revision or 'none (never migrated)'}, "
                f"this code needs {head}: run the migrations (alembic upgrade head, with BLOGSTREAM_DATABASE_URL "
                "set to it); until then nothing is written or paid for, and every event waits"
            )
        return revision

    @property
    def pool(self) -> asyncpg.Pool:  # type: ignore[override]  # read-only here, declared by the mixins
        if self._pool is None:
            raise DatabaseError("Database.start() has not been awaited")
        return self._pool  # type: ignore[return-value]  # the asyncpg pool's methods, statements made safe
