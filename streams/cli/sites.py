"""`blogstream sites ...`: the sites registry and its controls, straight in Postgres (store/sites.py).

    blogstream sites add SITE [--wix-api-key-env VAR] [--member-id M] [--weight 2]
    blogstream sites list [--json] | pause SITE | resume SITE | cancel SITE
    blogstream sites set SITE [--weight 2] [--max-in-flight 10] [--max-queued 500]
                              [--monthly-budget 50 | none] [--daily-budget 5 | none]

Workers re-read `sites` every two seconds: a change needs no restart.
"""
from __future__ import annotations

import os
from typing import Any

import click

from streams.cli import connect, output
from streams.cli.output import CliError, emit_json, json_option, warn

KEY_ENV = "BLOGSTREAM_WIX_API_KEY"

weight_option = click.option("--weight", type=click.FloatRange(min=0, min_open=True),
                             help="Share of every global budget, relative to other sites (default 1).")
in_flight_option = click.option("--max-in-flight", type=click.IntRange(min=1),
                                help="Requests of this site in flight at once, across all workers.")
queued_option = click.option("--max-queued", type=click.IntRange(min=1),
                             help="PENDING interactive requests of this site the intake accepts.")
queued_bulk_option = click.option("--max-queued-bulk", type=click.IntRange(min=1),
                                  help="PENDING bulk requests of this site the intake accepts (counted apart).")


NO_CAP = "none"


class Budget(click.ParamType):
    """US dollars (a spend cap), or `none` to remove the cap."""

    name = "usd"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or value == NO_CAP or isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text == NO_CAP:
            return NO_CAP
        from store.costs import budget_problem

        try:
            amount = float(text.lstrip("$"))
        except ValueError:
            self.fail(f"{value!r} is not an amount: give US dollars (e.g. 50 or 12.5) or none", param, ctx)
        if problem := budget_problem(amount):
            self.fail(f"{value!r} {problem.replace(', or null for no cap', ', or none')}", param, ctx)
        return amount


monthly_option = click.option("--monthly-budget", type=Budget(), metavar="USD|none",
                              help="Spend cap per UTC calendar month; reached, the site's requests wait (none: no cap).")
daily_option = click.option("--daily-budget", type=Budget(), metavar="USD|none",
                            help="Spend cap per UTC day (none: no cap).")


@click.group()
def sites() -> None:
    """The sites registry: register sites, pause, resume, cancel, change weights and caps."""


def site_json(site: Any) -> dict[str, Any]:
    """A site as `sites list --json` shows it: every control, never the Wix key."""
    return {
        "site_id": site.site_id, "name": site.name, "paused": site.paused, "weight": site.weight,
        "max_in_flight": site.max_in_flight, "max_queued": site.max_queued, "max_queued_bulk": site.max_queued_bulk,
        "wix_member_id": site.wix_member_id, "has_wix_api_key": bool(site.wix_api_key),
        "monthly_budget_usd": site.monthly_budget_usd, "daily_budget_usd": site.daily_budget_usd,
        "budget_exhausted": site.budget_exhausted,
    }


def wix_api_key(key_env: str | None, key: str | None) -> str:
    """The Wix API key from --wix-api-key-env VAR, --wix-api-key, $BLOGSTREAM_WIX_API_KEY or a hidden prompt."""
    if key_env and key:
        raise CliError("--wix-api-key-env and --wix-api-key both given", "give one of them", exit_code=2)
    if key_env:
        value = os.environ.get(key_env, "")
        if not value:
            raise CliError(f"the environment variable {key_env} (--wix-api-key-env) is not set or empty",
                           f"export {key_env}=... first", exit_code=2)
        return value
    if key:
        warn("--wix-api-key puts the key in your shell history and the process list; "
             f"prefer --wix-api-key-env VAR or {KEY_ENV}")
        return key
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    if output.interactive():
        return click.prompt("Wix API key", hide_input=True, err=True)
    raise CliError("no Wix API key given",
                   f"set {KEY_ENV}, or pass --wix-api-key-env VAR naming a variable that holds it", exit_code=2)


@sites.command()
@click.argument("site")
@click.option("--name", help="A display name [default: SITE].")
@click.option("--wix-api-key-env", "key_env", metavar="VAR",
              help=f"The environment variable that holds the site's Wix API key [default: {KEY_ENV}; "
                   "without it and on a terminal, a hidden prompt asks for the key].")
@click.option("--wix-api-key", "key", metavar="KEY",
              help="The key itself: it lands in your shell history and the process list, prefer --wix-api-key-env.")
@click.option("--member-id", help="The Wix member the posts are published as.")
@weight_option
@in_flight_option
@queued_option
@queued_bulk_option
def add(site: str, name: str | None, key_env: str | None, key: str | None, member_id: str | None,
        weight: float | None, max_in_flight: int | None, max_queued: int | None, max_queued_bulk: int | None) -> None:
    """Register SITE (or replace its registration)."""
    from store.sites import Site

    check_controls(weight=weight, max_in_flight=max_in_flight, max_queued=max_queued, max_queued_bulk=max_queued_bulk)
    check_registration(site, name=name, member_id=member_id)
    secret = checked_key(wix_api_key(key_env, key))
    config = connect.settings()
    record = Site(
        site_id=site, name=name or site, wix_api_key=secret, wix_member_id=member_id, weight=weight or 1.0,
        max_in_flight=max_in_flight or config.site_max_in_flight, max_queued=max_queued or config.site_max_queued,
        max_queued_bulk=max_queued_bulk or config.site_max_queued_bulk,
    )
    connect.run_db(lambda db: db.upsert_site(record))
    click.echo(f"site {site} registered")


@sites.command("list")
@json_option
def list_sites(as_json: bool) -> None:
    """Every registered site and its controls."""
    async def read(db: Any) -> list[Any]:
        return await db.list_sites()

    found = connect.run_db(read)
    if as_json:
        emit_json([site_json(s) for s in found])
        return
    for s in found:
        state = "paused" if s.paused else "budget_exhausted" if s.budget_exhausted else "active"
        caps = "".join(f" {name}={value:g}" for name, value in (("monthly_budget_usd", s.monthly_budget_usd),
                                                                 ("daily_budget_usd", s.daily_budget_usd))
                       if value is not None)
        held = f" ({s.budget_exhausted} cap reached)" if s.budget_exhausted and not s.paused else ""
        click.echo(f"{s.site_id:30} {state:7} weight={s.weight:g} max_in_flight={s.max_in_flight} "
                   f"max_queued={s.max_queued} max_queued_bulk={s.max_queued_bulk}{caps}{held}")


def check_controls(**controls: Any) -> None:
    """The store's ranges (the API's and the table's too), as a usage error naming the option."""
    from store.sites import control_problem

    for name, value in controls.items():
        if value is not None and (problem := control_problem(name, value)):
            option = "--" + name.replace("_", "-")
            shown = f"{value:g}" if isinstance(value, float) else str(value)  # an int may be too large for :g
            raise CliError(f"Invalid value for '{option}': {shown} {problem}", "see blogstream sites --help",
                           exit_code=2)


def _shown(value: str) -> str:
    """A value as an error line shows it: quoted, escaped (line breaks, bytes that are not UTF-8), cut."""
    import json

    return json.dumps(value if len(value) <= 40 else value[:40] + "...")


def check_registration(site: str, *, name: str | None, member_id: str | None) -> None:
    """The site id is one requests can name (the contract's site_id), its name and member id one line of text.

    Checked before anything is stored: a site no request could name was refused at every request, and
    text Postgres cannot hold (bytes that are not UTF-8) failed as a database error."""
    from streams.contract.errors import ID
    from streams.contract.rules import ONE_LINE_CONTROL, text_problem

    if not ID.fullmatch(site):
        raise CliError(f"the site id {_shown(site)} is not valid: it must be 1-128 characters of A-Z a-z 0-9 . _ : - "
                       "(every request names its site by it, as site_id, and its Wix calls send it as wix-site-id)",
                       "give the site's Wix site id", exit_code=2)
    for option, value in (("--name", name), ("--member-id", member_id)):
        if value is not None and (text_problem(value) or ONE_LINE_CONTROL.search(value)):
            raise CliError(f"{option} {_shown(value)} is not one line of UTF-8 text",
                           f"give {option} without line breaks or control characters", exit_code=2)


def checked_key(key: str) -> str:
    """The Wix API key as it is sent (the Authorization header of every Wix call of the site).

    Surrounding spaces and line breaks are dropped (a key read from a file often ends with one). Inside,
    a key is ASCII without control characters: a line break there made every Wix call of the site fail
    ("Forbidden control character detected in headers") as a fault of blogstream, four tries per post.
    """
    stripped = key.strip()
    wrong = next((i for i, c in enumerate(stripped) if not " " <= c <= "~"), None)
    if not stripped or wrong is not None:
        what = "is empty" if not stripped else (
            f"has {_shown(stripped[wrong])} at character {wrong + 1}, which no Wix key has "
            "(a line break, a control character, or one that is not ASCII such as a typographic quote)")
        raise CliError(f"the Wix API key {what}", "give the key as Wix shows it, on one line", exit_code=2)
    return stripped


def not_registered(site: str) -> CliError:
    return CliError(f"site {site} is not registered", f"register it first: blogstream sites add {site}")


def change(site: str, **controls: Any) -> None:
    updated = connect.run_db(lambda db: db.update_site_controls(site, **controls))
    if updated is None:
        raise not_registered(site)
    click.echo(f"{updated!r}")  # the key is masked in a Site's repr


@sites.command()
@click.argument("site")
def pause(site: str) -> None:
    """Hold SITE's requests (nothing is lost; resume lets them go on)."""
    change(site, paused=True)


@sites.command()
@click.argument("site")
def resume(site: str) -> None:
    """Let a paused SITE's requests go on."""
    change(site, paused=False)


@sites.command("set")
@click.argument("site")
@weight_option
@in_flight_option
@queued_option
@queued_bulk_option
@monthly_option
@daily_option
def set_controls(site: str, weight: float | None, max_in_flight: int | None, max_queued: int | None,
                 max_queued_bulk: int | None, monthly_budget: Any, daily_budget: Any) -> None:
    """Change SITE's weight, in-flight cap, queue limits or spend caps.

    A raised spend cap releases the site's waiting requests within two seconds.
    """
    if weight is None and max_in_flight is None and max_queued is None and max_queued_bulk is None \
            and monthly_budget is None and daily_budget is None:
        raise CliError("nothing to change", "give --weight, --max-in-flight, --max-queued, --max-queued-bulk, "
                       "--monthly-budget or --daily-budget", exit_code=2)
    check_controls(weight=weight, max_in_flight=max_in_flight, max_queued=max_queued, max_queued_bulk=max_queued_bulk)
    caps = {name: None if value == NO_CAP else value
            for name, value in (("monthly_usd", monthly_budget), ("daily_usd", daily_budget)) if value is not None}
    if caps:
        from store.costs import Costs

        global_cap = connect.settings().global_daily_budget_usd or None
        if not connect.run_db(lambda db: Costs(db).set_budgets(site, **caps, global_daily_usd=global_cap)):
            raise not_registered(site)
    change(site, weight=weight, max_in_flight=max_in_flight, max_queued=max_queued, max_queued_bulk=max_queued_bulk)


@sites.command()
@click.argument("site")
def cancel(site: str) -> None:
    """Cancel SITE's requests that no stage has started yet (they become CANCELLED)."""
    async def run(db: Any) -> list[str] | None:
        if await db.get_site(site) is None:
            return None
        from store.parked import cancel_waiting

        return await cancel_waiting(db, site)  # its parked requests too

    cancelled = connect.run_db(run)
    if cancelled is None:
        raise not_registered(site)
    click.echo(f"cancelled {len(cancelled)} queued request(s) of site {site}")
