"""stack/harness.py: the workers a test or benchmark starts run the code of the tree it was started from."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg

from stack.harness import ROOT, Pipeline, database_url, drop_database


def test_a_worker_imports_this_tree_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = Pipeline(name="runtest").env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    # What the worker's interpreter then imports, started from outside the tree as `faust` is.
    found = subprocess.run(
        [sys.executable, "-c", "import streams; print(streams.__file__)"],
        env=env, cwd="/", capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert found == str(ROOT / "streams" / "__init__.py")


def test_a_scratch_database_is_dropped_with_our_own_connections_still_open():
    """Needs the local stack's Postgres. Not WITH (FORCE), which also ends autovacuum and so needs
    pg_signal_backend; our own role's leftover connections are ended before a plain DROP."""
    async def scenario():
        name = f"bs_drop_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(database_url("postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            left_open = await asyncpg.connect(database_url(name))  # a worker's pool not yet closed
            await drop_database(database_url("postgres"), name)
            found = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
            assert left_open.is_closed() or not await _still_usable(left_open)
            return found
        finally:
            await admin.close()

    assert asyncio.run(scenario()) == 0


async def _still_usable(conn) -> bool:
    try:
        await conn.fetchval("SELECT 1")
        return True
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return False
