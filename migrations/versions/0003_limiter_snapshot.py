"""limiter_snapshot: the coordinator's figures for every worker; site controls bounded

limiter_snapshot: one row per deployment (app id). The limiter coordinator writes its
figures here at most once a second (store/limiter_snapshot.py); every worker's stats
pages, heartbeat and site view read the row instead of asking the coordinator, so a
stats request costs the coordinator nothing (docs/limiter.md, "Reading the stats").
`written_at` is Postgres' clock, so a reader's idea of the row's age needs no worker clock.

sites: the controls get the ranges the API and store/sites.py enforce (weight 0.01-100,
max_in_flight 1-1000, max_queued 1-100,000). `weight > 0` let Infinity and NaN in
(double precision has both); rows out of range are brought into it first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-21
"""
from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE limiter_snapshot (
          app_id text PRIMARY KEY,                              -- settings.app_id: one row per deployment
          coordinator text NOT NULL,                            -- instance id of the coordinator that wrote it
          figures jsonb NOT NULL,                               -- what /api/limiter serves
          written_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute(
        """
        UPDATE sites SET
          weight = CASE WHEN weight = 'NaN' THEN 1 ELSE LEAST(GREATEST(weight, 0.01), 100) END,
          max_in_flight = LEAST(max_in_flight, 1000),
          max_queued = LEAST(max_queued, 100000)
        WHERE NOT (weight BETWEEN 0.01 AND 100) OR max_in_flight > 1000 OR max_queued > 100000
        """
    )
    op.execute(
        """
        ALTER TABLE sites
          ADD CONSTRAINT sites_weight_range CHECK (weight BETWEEN 0.01 AND 100),
          ADD CONSTRAINT sites_max_in_flight_range CHECK (max_in_flight BETWEEN 1 AND 1000),
          ADD CONSTRAINT sites_max_queued_range CHECK (max_queued BETWEEN 1 AND 100000)
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE sites
          DROP CONSTRAINT sites_max_queued_range,
          DROP CONSTRAINT sites_max_in_flight_range,
          DROP CONSTRAINT sites_weight_range
        """
    )
    op.execute("DROP TABLE limiter_snapshot")
