"""The limiter coordinator's figures, published for every worker (docs/limiter.md, "Reading the stats").

The coordinator computes its figures at most once a second and writes them here, one
row per deployment (app id). The stats pages, the heartbeat and the site view of every
worker read that row instead of asking the coordinator, so however many stats requests
arrive, the coordinator's cost stays one computation and one write a second.

The row's age is measured with Postgres' own clock (`written_at` and `clock_timestamp()`
in one statement), so no worker's clock skews it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["LimiterSnapshot", "read_snapshot", "write_snapshot"]


class _Pool(Protocol):
    async def execute(self, query: str, *args: Any) -> str: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class LimiterSnapshot:
    figures: dict[str, Any]  # the coordinator's stats (what /api/limiter serves)
    coordinator: str  # instance id of the coordinator that wrote them
    age_seconds: float  # how long ago they were written (Postgres' clock)


def _finite(value: Any) -> bool:
    """True when a JSON value holds no NaN or infinity anywhere (jsonb refuses them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


async def write_snapshot(pool: _Pool, app_id: str, coordinator: str, figures: dict[str, Any], *,
                         merge: bool = False) -> None:
    """Replace the deployment's snapshot (one statement). ValueError for figures that are not finite JSON.

    merge=True replaces only the top-level keys given and keeps the others as they were written (the
    coordinator's per-site sections, written less often than its global figures), if the same coordinator
    wrote them; a row of another coordinator is replaced whole.
    """
    if not _finite(figures):
        raise ValueError("the limiter's figures hold NaN or infinity: not published")
    await pool.execute(
        """
        INSERT INTO limiter_snapshot (app_id, coordinator, figures, written_at)
        VALUES ($1, $2, $3::text::jsonb, clock_timestamp())
        ON CONFLICT (app_id) DO UPDATE SET
          coordinator = EXCLUDED.coordinator,
          figures = CASE WHEN $4::boolean AND limiter_snapshot.coordinator = EXCLUDED.coordinator
                         THEN limiter_snapshot.figures || EXCLUDED.figures ELSE EXCLUDED.figures END,
          written_at = EXCLUDED.written_at
        """,
        app_id, coordinator, json.dumps(figures, separators=(",", ":"), allow_nan=False), merge,
    )


async def read_snapshot(pool: _Pool, app_id: str) -> LimiterSnapshot | None:
    """The deployment's snapshot and its age, None if no coordinator has written one yet."""
    record = await pool.fetchrow(
        """
        SELECT figures::text AS figures, coordinator,
               extract(epoch FROM clock_timestamp() - written_at)::float8 AS age
        FROM limiter_snapshot WHERE app_id = $1
        """,
        app_id,
    )
    if record is None:
        return None
    return LimiterSnapshot(json.loads(record["figures"]), record["coordinator"], max(0.0, float(record["age"])))
