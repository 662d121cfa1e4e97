"""openai_batch_lines, openai_batches: the bulk lane through the OpenAI Batch API

openai_batch_lines: one row per bulk request the batch lane holds (the request id is the
line's custom_id). `state`: queued (waiting for a file), batched (in `batch_key`'s file),
written (its article is in the effect ledger and the request went back to blog.requests),
realtime (to go through the real-time lane), cancelled (cancelled while held). A written or
realtime line is sent back to blog.requests after its state is stored (`sent_back`, an outbox:
a restart in between sends it then).
`prompt_tokens` and `bytes` are what the line adds to a file (the Batch API's limits).

openai_batches: one row per file we send, written before any call (`state` assembled),
then submitting (before POST /v1/batches: a restart looks the batch up by its key in
the metadata instead of sending it again), submitted (the provider's `batch_id` is
recorded) and ended (its lines are settled). A worker works on a batch only while it
holds its claim (`claimed_by` until `claimed_until`), as with the effect ledger.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""
from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE openai_batch_lines (
          request_id text PRIMARY KEY,
          site_id text NOT NULL,
          model text NOT NULL,
          request jsonb NOT NULL,                   -- the BlogRequest, sent back to blog.requests
          prompt_tokens integer NOT NULL CHECK (prompt_tokens >= 0),
          bytes integer NOT NULL CHECK (bytes > 0),
          state text NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'batched', 'written', 'realtime', 'cancelled')),
          batch_key text,
          attempts integer NOT NULL DEFAULT 0,      -- batches it was in that did not give its article
          error text,                               -- the last one's reason
          sent_back boolean NOT NULL DEFAULT false, -- written / realtime: the request went back to blog.requests
          queued_at timestamptz NOT NULL DEFAULT now(),
          updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX openai_batch_lines_queued ON openai_batch_lines (model, queued_at) WHERE state = 'queued'")
    op.execute("CREATE INDEX openai_batch_lines_to_send ON openai_batch_lines (updated_at) "
               "WHERE state IN ('written', 'realtime') AND NOT sent_back")
    op.execute("CREATE INDEX openai_batch_lines_by_batch ON openai_batch_lines (batch_key) WHERE batch_key IS NOT NULL")
    op.execute(
        """
        CREATE TABLE openai_batches (
          batch_key text PRIMARY KEY,
          model text NOT NULL,
          state text NOT NULL DEFAULT 'assembled'
            CHECK (state IN ('assembled', 'submitting', 'submitted', 'ended')),
          lines integer NOT NULL,
          prompt_tokens bigint NOT NULL,            -- enqueued while the batch runs
          batch_id text UNIQUE,
          provider_status text,
          error text,
          claimed_by text,
          claimed_until timestamptz,
          created_at timestamptz NOT NULL DEFAULT now(),
          polled_at timestamptz,
          ended_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX openai_batches_open ON openai_batches (created_at) WHERE state <> 'ended'")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS openai_batches")
    op.execute("DROP TABLE IF EXISTS openai_batch_lines")
