"""Postgres: the one place with SQL (outcomes, sites registry, effect ledger, pending counts)."""
