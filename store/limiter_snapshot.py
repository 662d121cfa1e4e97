"""The limiter coordinator's figures, published for every worker (docs/limiter.md, "Reading the stats").

The coordinator computes its figures at most once a second (less often when costly) and writes them here, one
row per deployment (app id). The stats pages, the heartbeat and the site view of every
worker read that row instead of asking the coordinator, so however many stats requests
arrive, the coordinator's cost stays one computation and one write a second.

The row's age is measured with Postgres' own clock (`written_at` and `clock_timestamp()`
in one statement), so no worker's clock skews it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["LimiterSnapshot", "encode_figures", "read_snapshot", "write_snapshot"]


class _Pool(Protocol):
    async def execute(self, query: str, *args: Any) -> str: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class LimiterSnapshot:
    figures: dict[str, Any]  # the coordinator's stats (what /api/limiter serves)
    coordinator: str  # instance id of the coordinator that wrote them
    age_seconds: float  # how long ago they were written (Postgres' clock)


def encode_figures(figures: dict[str, Any]) -> str:
    """The figures as the JSON text the row holds. ValueError for NaN or infinity anywhere (jsonb refuses them).

    Apart from the write so that its caller can time it: with a budget per site it is most of
    what publishing costs the coordinator (2 MB of JSON at 10,000 sites).
    """
    try:
        return json.dumps(figures, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ValueError("the limiter's figures hold NaN or infinity: not published") from None


async def write_snapshot(pool: _Pool, app_id: str, coordinator: str, figures: dict[str, Any] | str) -> None:
    """Replace the deployment's snapshot (one statement). `figures` as a dict, or as `encode_figures` gave them.

    ValueError for figures that are not finite JSON.
    """
    text = figures if isinstance(figures, str) else encode_figures(figures)
    await pool.execute(
        """
        INSERT INTO limiter_snapshot (app_id, coordinator, figures, written_at)
        VALUES ($1, $2, $3::text::jsonb, clock_timestamp())
        ON CONFLICT (app_id) DO UPDATE SET
          coordinator = EXCLUDED.coordinator, figures = EXCLUDED.figures, written_at = EXCLUDED.written_at
        """,
        app_id, coordinator, text,
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
