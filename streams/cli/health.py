"""`blogstream health`: the seed's health check, a per-site table, and a verdict as the exit code.

    0  healthy
    1  degraded: FAILED above 5% of the last hour's outcomes, more than 1,000 PENDING, a global
       budget above 90% used, or no limiter coordinator answering (the seed's alert thresholds)
    2  down: the database or the worker does not answer
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import click

from streams.cli import connect
from streams.cli.output import columns, emit_json, json_option, worker_option

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
# The seed's alert thresholds (Monitoring: Error Rate > 5%, Queue Size > 1000 warn / > 5000 critical, RPM > 90%).
MAX_FAILED_RATE = 0.05
MAX_PENDING = 1000
CRITICAL_PENDING = 5000
MAX_BUDGET_USE = 0.90
GLOBAL_BUDGETS = ("openai_requests", "openai_tokens", "replicate_requests")
SEED_PAGES = (("OpenAI Rate Limiter", "/api/rate-limiter/stats"), ("Replicate Rate Limiter", "/api/replicate-rate-limiter/stats"))


@dataclass
class Answer:
    """A worker page's JSON, or why there is none (`reached`: the worker answered at all)."""

    body: dict[str, Any] | None
    reached: bool
    why_not: str = ""


def fetch(worker: str, path: str) -> Answer:
    import httpx

    try:
        auth = connect.admin_headers()  # the limiter's figures need the admin token when one is set
        response = httpx.get(f"{worker}{path}", timeout=8, **({"headers": auth} if auth else {}))
        body = response.json()
    except httpx.TransportError as exc:
        return Answer(None, False, f"no worker answered at {worker} ({type(exc).__name__})")
    except Exception as exc:  # an answer that is not JSON
        return Answer(None, True, f"the worker at {worker} answered {path} with no JSON ({type(exc).__name__})")
    if response.status_code != 200 or not isinstance(body, dict):
        error = connect.json_or_empty(response).get("error", "")  # e.g. 503: the coordinator is moving
        return Answer(None, True, f"the worker at {worker} answered {response.status_code}: {error}")
    return Answer(body, True)


def limiter_stats(worker: str) -> tuple[dict[str, Any] | None, str]:
    """The coordinator's figures (`/api/limiter`) through a worker, or None and why not."""
    answer = fetch(worker, "/api/limiter")
    return answer.body, answer.why_not


def site_rows(pending: dict[str, int], limiter: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per site, busiest first: queued (PENDING in Postgres), in flight and its units and share
    of each global budget (limiter coordinator; without its figures, only queued)."""
    if limiter is None:
        return [{"site": site, "queued": n} for site, n in sorted(pending.items(), key=lambda kv: (-kv[1], kv[0]))]
    from streams.metrics import site_budget_shares

    in_flight: dict[str, int] = {site: int(n) for site, n in (limiter.get("slots") or {}).items()}
    shares = site_budget_shares(limiter)
    sites = set(pending) | set(in_flight) | {site for by_site in shares.values() for site in by_site}

    def busiest(site: str) -> tuple[int, float, str]:
        share = sum(shares[b].get(site, (0.0, 0.0))[1] for b in shares)
        return (-(pending.get(site, 0) + in_flight.get(site, 0)), -share, site)

    return [
        {"site": site, "queued": pending.get(site, 0), "in_flight": in_flight.get(site, 0),
         "budgets": {b: {"units": shares[b].get(site, (0.0, 0.0))[0], "share": shares[b].get(site, (0.0, 0.0))[1]}
                     for b in shares}}
        for site in sorted(sites, key=busiest)
    ]


def site_table(
    pending: dict[str, int], limiter: dict[str, Any] | None, *, why_not: str = "", top: int = 20
) -> list[str]:
    """The per-site lines of `blogstream health`: queued, in flight, share of each global budget.

    Queued is PENDING in Postgres (requests not finished yet, in flight
    included); in flight and shares come from the limiter coordinator. Without
    a coordinator's answer only the queued column is printed. The busiest
    sites come first: the table is for spotting a site that crowds others out.
    """
    rows = site_rows(pending, limiter)
    if limiter is None:
        unknown = f"in flight and budget shares unknown, {why_not or 'no limiter figures'}"
        if not rows:
            return [f"Sites: nothing queued in Postgres; {unknown}"]
        table = [["site", "queued"]] + [[r["site"], str(r["queued"])] for r in rows[:top or None]]
        return [f"Sites: {unknown}; queued from Postgres:"] + columns(table) + _more(len(rows), top)
    if not rows:
        return ["Sites: nothing queued, in flight or granted in the current window"]
    budgets = list(rows[0]["budgets"])
    window = float(limiter.get("window_seconds") or 60)
    lines = [f"Sites (queued: PENDING in Postgres; in flight, and units (share) of each budget granted in the last "
             f"{window:g} s: limiter coordinator):"]
    table = [["site", "queued", "in flight", *budgets]]
    for row in rows[:top or None]:
        cells = [row["site"], str(row["queued"]), str(row["in_flight"])]
        for budget in budgets:
            units, part = row["budgets"][budget]["units"], row["budgets"][budget]["share"]
            cells.append(f"{units:,.0f} ({100 * part:.1f}%)" if units else "-")
        table.append(cells)
    return lines + columns(table) + _more(len(rows), top)


def _more(rows: int, top: int) -> list[str]:
    return [f"  ... and {rows - top} more site(s) (--sites 0 lists all)"] if top and rows > top else []


@dataclass
class Report:
    """Everything `blogstream health` found, and its verdict."""

    worker: str
    figures: Any = None  # store.outcomes.HealthFigures, None when the database did not answer
    pending: dict[str, int] = field(default_factory=dict)
    database_error: str = ""
    seed: dict[str, Answer] = field(default_factory=dict)  # page -> answer
    limiter: Answer = field(default_factory=lambda: Answer(None, False, "not asked"))

    @property
    def failed_rate(self) -> float | None:
        """FAILED among the last hour's outcomes (FAILED + DONE), None without any."""
        if self.figures is None:
            return None
        total = self.figures.errors_last_hour + self.figures.completed_last_hour
        return self.figures.errors_last_hour / total if total else None

    def assess(self) -> tuple[str, list[str]]:
        """(healthy | degraded | down, the problems that decided it)."""
        down, degraded = [], []
        if self.figures is None:
            down.append(f"database: {self.database_error}")
        if not self.limiter.reached and not any(a.reached for a in self.seed.values()):
            down.append(f"worker: {self.limiter.why_not}")
        elif self.limiter.body is None:
            degraded.append(f"no limiter coordinator answering ({self.limiter.why_not})")
        if self.figures is not None:
            rate = self.failed_rate
            if rate is not None and rate > MAX_FAILED_RATE:
                degraded.append(f"FAILED {100 * rate:.1f}% of the last hour's outcomes (above {100 * MAX_FAILED_RATE:g}%)")
            if self.figures.queue_size > MAX_PENDING:
                level = "critical, " if self.figures.queue_size > CRITICAL_PENDING else ""
                degraded.append(f"{self.figures.queue_size:,} PENDING ({level}above {MAX_PENDING:,})")
        for name, use in budget_use(self.limiter.body).items():
            if use > MAX_BUDGET_USE:
                degraded.append(f"budget {name} {100 * use:.1f}% used (above {100 * MAX_BUDGET_USE:g}%)")
        if down:
            return DOWN, down + degraded
        return (DEGRADED, degraded) if degraded else (HEALTHY, [])

    def as_json(self, top: int) -> dict[str, Any]:
        status, problems = self.assess()
        figures = self.figures.as_dict() if self.figures is not None else None
        if figures is not None:
            figures["failed_rate"] = self.failed_rate
        rows = site_rows(self.pending, self.limiter.body)
        return {
            "status": status, "problems": problems, "worker": self.worker, "database": figures,
            "database_error": self.database_error or None,
            "rate_limiter": _seed_json(self.seed.get("/api/rate-limiter/stats")),
            "replicate_rate_limiter": _seed_json(self.seed.get("/api/replicate-rate-limiter/stats")),
            "limiter": self.limiter.body, "limiter_error": self.limiter.why_not or None,
            "pending_by_site": self.pending, "sites": rows[:top or None],
        }


def _seed_json(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    return answer.body if answer.body is not None else {"error": answer.why_not}


def budget_use(limiter: dict[str, Any] | None) -> dict[str, float]:
    """Used part of each global budget in the current window, from the coordinator's figures."""
    out: dict[str, float] = {}
    for name in GLOBAL_BUDGETS:
        budget = (limiter or {}).get(name)
        if isinstance(budget, dict) and budget.get("limit"):
            out[name] = float(budget.get("used_in_window", 0)) / float(budget["limit"])
    return out


def gather(worker: str) -> Report:
    """Ask the database and the worker; nothing that does not answer is an error here, only a finding."""
    report = Report(worker)

    async def read(db: Any) -> None:
        report.figures = await db.health()
        report.pending = await db.pending_by_site()

    try:
        asyncio.run(connect.with_db(read))
    except Exception as exc:
        problem = connect.database_problem(exc)
        if problem is None:
            raise
        report.figures, report.database_error = None, problem[0]
    for _, path in SEED_PAGES:
        report.seed[path] = fetch(worker, path)
    report.limiter = fetch(worker, "/api/limiter")
    return report


def seed_lines(report: Report) -> list[str]:
    """What the seed's health-check script printed."""
    lines = ["=== Blog Generation System Health ==="]
    figures = report.figures
    lines.append(f"Queue Size: {figures.queue_size}" if figures else f"Queue Size: unknown, {report.database_error}")
    for label, path in SEED_PAGES:
        answer = report.seed[path]
        stats = answer.body if answer.body is not None else {
            "error": f"{answer.why_not}; start one: faust -A streams worker" if not answer.reached else answer.why_not}
        lines.append(f"{label}: {json.dumps(stats)}")
    if figures:
        lines += [f"Errors (last hour): {figures.errors_last_hour}",
                  f"Completed (last hour): {figures.completed_last_hour}",
                  f"Rate: {figures.blogs_per_minute:.1f} blogs/min"]
    if report.pending:
        top = sorted(report.pending.items(), key=lambda kv: -kv[1])[:10]
        lines.append("Pending by site: " + ", ".join(f"{s}={n}" for s, n in top))
    return lines


@click.command()
@worker_option
@click.option("--sites", "top", type=click.IntRange(min=0), default=20, show_default=True,
              help="Rows of the per-site table, busiest first (0: all).")
@json_option
def health(worker: str | None, top: int, as_json: bool) -> None:
    """Queue, limiter usage, errors and completions in the last hour, per-site figures, and a verdict.

    Exit code: 0 healthy, 1 degraded (FAILED above 5% of the last hour, more than 1,000 PENDING,
    a budget above 90%, no limiter coordinator answering), 2 down (database or worker unreachable).
    """
    report = gather(connect.worker_url(worker))
    status, problems = report.assess()
    if as_json:
        emit_json(report.as_json(top))
    else:
        for line in seed_lines(report) + site_table(report.pending, report.limiter.body,
                                                    why_not=report.limiter.why_not, top=top):
            click.echo(line)
        click.echo(f"Status: {status}" + (": " + "; ".join(problems) if problems else ""))
    raise click.exceptions.Exit(EXIT_CODES[status])
