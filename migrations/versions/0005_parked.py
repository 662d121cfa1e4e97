"""parked_events: a paused site's stage events, out of Kafka until it is resumed

A worker that meets an event of a paused site stores it here and acks it, so the
partition's committed offset and the worker's read-ahead move on (store/parked.py).
On resume the events are produced back to their source topics, oldest first (by id),
then deleted. One row per source record: (topic, partition, offset) is unique, so a
replayed copy parked again is a no-op. `cancel_reason` marks events a cancel has
ended; they are released as CANCELLED results instead of going back.

Revision ID: 0005
Revises: 0003
Create Date: 2026-01-20
"""
from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE parked_events (
          id bigserial PRIMARY KEY,                 -- the order events go back in
          site_id text NOT NULL,
          stage text NOT NULL,                      -- the stage that parked it: generate / image / publish
          request_id text,                          -- NULL: bytes the stage will dead-letter once back
          source_topic text NOT NULL,
          source_partition integer NOT NULL,
          source_offset bigint NOT NULL,
          key bytea,
          value bytea,
          headers jsonb NOT NULL DEFAULT '[]',      -- [[name, base64 value], ...]
          parked_at timestamptz NOT NULL DEFAULT now(),
          cancel_reason text,
          CONSTRAINT parked_events_source_once UNIQUE (source_topic, source_partition, source_offset)
        )
        """
    )
    op.execute("CREATE INDEX parked_events_by_site ON parked_events (site_id, id)")


def downgrade() -> None:
    op.execute("DROP TABLE parked_events")
