"""request_costs, site_spend, daily_spend: what every paid call cost; sites get spend caps

request_costs: one row per paid provider call, keyed by the provider's own id of the
call (the chat completion id, the prediction id), so recording a call again (a replayed
event, a retried write) is a no-op. Tokens, images and seconds are what the provider
said it used; `cost_usd` is NULL when the price table had no price for the model.

site_spend, daily_spend: running totals per site and UTC day, and of all sites per UTC
day, kept in the statement that inserts a cost (store/costs.py), so a budget check reads
one row instead of summing the month's calls.

sites: `monthly_budget_usd` (per UTC calendar month) and `daily_budget_usd` (per UTC day),
NULL for no cap; `budget_exhausted` says which cap holds the site ('month', 'day',
'global_day': BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD), NULL while it may spend. Workers park
a held site's events like a paused site's, and release them once no cap holds it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE request_costs (
          id bigserial PRIMARY KEY,
          request_id text NOT NULL,
          site_id text NOT NULL,
          provider text NOT NULL,                   -- openai / replicate
          call_id text NOT NULL,                    -- the provider's id of the call
          model text NOT NULL,
          lane text NOT NULL DEFAULT 'realtime' CHECK (lane IN ('realtime', 'batch')),
          input_tokens integer,
          output_tokens integer,
          cached_tokens integer,
          images integer,
          seconds double precision,
          cost_usd numeric(20, 10) CHECK (cost_usd >= 0),
          recorded_at timestamptz NOT NULL DEFAULT now(),
          CONSTRAINT request_costs_call_once UNIQUE (provider, call_id)
        )
        """
    )
    op.execute("CREATE INDEX request_costs_by_site ON request_costs (site_id, recorded_at)")
    op.execute("CREATE INDEX request_costs_by_time ON request_costs (recorded_at)")
    op.execute("CREATE INDEX request_costs_by_request ON request_costs (request_id)")
    op.execute(
        """
        CREATE TABLE site_spend (
          site_id text NOT NULL,
          day date NOT NULL,
          usd numeric(20, 10) NOT NULL DEFAULT 0,
          PRIMARY KEY (site_id, day)
        )
        """
    )
    op.execute("CREATE TABLE daily_spend (day date PRIMARY KEY, usd numeric(20, 10) NOT NULL DEFAULT 0)")
    op.execute(
        """
        ALTER TABLE sites
          ADD COLUMN monthly_budget_usd numeric(14, 4)
              CONSTRAINT sites_monthly_budget_range CHECK (monthly_budget_usd >= 0 AND monthly_budget_usd <= 1000000000),
          ADD COLUMN daily_budget_usd numeric(14, 4)
              CONSTRAINT sites_daily_budget_range CHECK (daily_budget_usd >= 0 AND daily_budget_usd <= 1000000000),
          ADD COLUMN budget_exhausted text
              CONSTRAINT sites_budget_exhausted_check CHECK (budget_exhausted IN ('month', 'day', 'global_day'))
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE sites DROP COLUMN budget_exhausted, DROP COLUMN daily_budget_usd, DROP COLUMN monthly_budget_usd")
    op.execute("DROP TABLE daily_spend")
    op.execute("DROP TABLE site_spend")
    op.execute("DROP TABLE request_costs")
