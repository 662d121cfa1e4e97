"""initial schema: sites, blog_generations, stage_outputs

Revision ID: 0001
Revises:
Create Date: 2025-11-29
"""
from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE sites (
          site_id text PRIMARY KEY,
          name text NOT NULL DEFAULT '',
          wix_api_key text NOT NULL DEFAULT '',
          wix_member_id text,
          weight double precision NOT NULL DEFAULT 1 CHECK (weight > 0),
          max_in_flight integer NOT NULL DEFAULT 20 CHECK (max_in_flight > 0),
          max_queued integer NOT NULL DEFAULT 1000 CHECK (max_queued > 0),
          paused boolean NOT NULL DEFAULT false,
          created_at timestamptz NOT NULL DEFAULT now(),
          updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE blog_generations (
          id text PRIMARY KEY,                          -- request id (idempotency key)
          site_id text NOT NULL,
          status text NOT NULL CHECK (status IN ('PENDING','DONE','FAILED','CANCELLED')),
          stage text NOT NULL DEFAULT 'requested',      -- requested / drafted / illustrated / published / failed
          stage_rank smallint NOT NULL DEFAULT 0,       -- statuses only move forward: upserts keep the higher rank
          request jsonb,
          title text, post_id text, post_url text, image_url text,
          error text,
          attempts integer NOT NULL DEFAULT 0,
          prompt_tokens integer, completion_tokens integer,
          created_at timestamptz NOT NULL DEFAULT now(),
          updated_at timestamptz NOT NULL DEFAULT now(),
          drafted_at timestamptz, illustrated_at timestamptz, finished_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX blog_generations_status_idx ON blog_generations (status, created_at)")
    op.execute("CREATE INDEX blog_generations_site_idx ON blog_generations (site_id, created_at)")
    op.execute("CREATE INDEX blog_generations_finished_idx ON blog_generations (finished_at) WHERE status = 'DONE'")
    op.execute(
        """
        CREATE TABLE stage_outputs (                    -- ledger of paid/visible effects, checked before redoing them
          request_id text NOT NULL,
          stage text NOT NULL,                          -- generate / image / publish
          site_id text NOT NULL,
          payload jsonb NOT NULL,
          created_at timestamptz NOT NULL DEFAULT now(),
          PRIMARY KEY (request_id, stage)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS stage_outputs")
    op.execute("DROP TABLE IF EXISTS blog_generations")
    op.execute("DROP TABLE IF EXISTS sites")
