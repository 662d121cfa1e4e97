"""`blogstream costs`: what the paid calls cost, from Postgres (store/costs.py).

    blogstream costs [--site S] [--since 30d] [--by day|site|model] [--json]

Every paid provider call is recorded once, with the tokens or images the provider
reported and its price from the price table; this sums them. With --site it also
shows the site's spend caps and what it spent this UTC month and day.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import click

from streams.cli import connect
from streams.cli.output import CliError, emit_json, json_option
from streams.cli.retry import Duration

ROWS = 1000  # lines shown at most (the dearest first, by site); the total counts every call


@click.command()
@click.option("--site", metavar="SITE", help="Only this site's calls (and its spend caps).")
@click.option("--since", type=Duration(), default="30d", show_default=True, metavar="DURATION",
              help="Calls recorded in this last stretch of time: 12h, 7d, 30d ...")
@click.option("--by", "by", type=click.Choice(["day", "site", "model"]), default="day", show_default=True,
              help="One line per UTC day, per site, or per provider:model.")
@json_option
def costs(site: str | None, since: timedelta, by: str, as_json: bool) -> None:
    """What the paid provider calls cost (tokens and images as the providers billed them, at the price table's prices)."""
    from store.costs import Costs

    start = datetime.now(timezone.utc) - since

    async def read(db: Any) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
        store = Costs(db)
        budget = await store.budget(site) if site else None
        rows = await store.summary(by=by, site_id=site, since=start, limit=ROWS + 1)  # type: ignore[arg-type]
        return rows, await store.totals(site_id=site, since=start), budget

    rows, totals, budget = connect.run_db(read)
    if site and budget is None:
        raise CliError(f"site {site} is not registered", "see blogstream sites list")
    cut, rows = len(rows) > ROWS, rows[:ROWS]
    total = totals["usd"]
    if as_json:
        emit_json({"since": start.isoformat(), "by": by, "site": site, "total_usd": total,
                   "calls": totals["calls"], "rows": rows, "rows_cut": cut, "budget": budget})
        return
    click.echo(f"{by:<28} {'USD':>12} {'calls':>8} {'requests':>9} {'input tok':>11} {'output tok':>11} {'images':>7}")
    for r in rows:
        unpriced = f"  ({r['unpriced_calls']} without a price)" if r["unpriced_calls"] else ""
        click.echo(f"{str(r[by]):<28} {r['usd'] or 0:>12.4f} {r['calls']:>8} {r['requests']:>9} "
                   f"{r['input_tokens']:>11} {r['output_tokens']:>11} {r['images']:>7}{unpriced}")
    if cut:
        click.echo(f"... the dearest {ROWS} of more {by}s shown; the total counts them all")
    click.echo(f"{'total':<28} {total:>12.4f} {totals['calls']:>8} {totals['requests']:>9}")
    if budget is not None:
        click.echo(_budget_line(site or "", budget))


def _budget_line(site: str, budget: dict[str, Any]) -> str:
    from store.costs import release_advice

    def cap(spent: float, limit: float | None) -> str:
        return f"{spent:.4f} of {limit:g}" if limit is not None else f"{spent:.4f} (no cap)"

    line = (f"site {site}: this month {cap(budget['spent_this_month_usd'], budget['monthly_budget_usd'])}, "
            f"today {cap(budget['spent_today_usd'], budget['daily_budget_usd'])} USD")
    if budget.get("reserved_usd"):
        line += f", {budget['reserved_usd']:.4f} more reserved by running batches (counted as spent for the caps)"
    if budget["budget_exhausted"]:
        line += (f"; budget_exhausted ({budget['budget_exhausted']} cap reached): its requests wait; to go on, "
                 f"{release_advice(budget['budget_exhausted'], site)}")
    return line
