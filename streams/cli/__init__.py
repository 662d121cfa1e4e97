"""`blogstream` command line: submit requests, register sites, retry, check health. Never loads Faust.

    blogstream submit --site shop-1 --topic "Summer sandals" [--keywords a,b]
    blogstream submit --file requests.jsonl          (or .csv; a progress bar shows)
    blogstream sites add shop-1 [--wix-api-key-env VAR] [--member-id M] [--weight 2]
    blogstream sites list [--json] | pause SITE | resume SITE | cancel SITE | set SITE --weight 2
    blogstream retry REQUEST_ID ...                   (run FAILED requests again, after fixing their error)
    blogstream retry --failed [--site S] [--since 1h] [--yes]
    blogstream health [--sites 20] [--json]           (exit code 0 healthy, 1 degraded, 2 down)
    blogstream topics tail TOPIC [-n 10] [--no-follow] [--json]   (records decoded; blog.dlq with reasons)

Every read command takes --json (the answer alone on stdout). Errors are one line on
stderr, `blogstream: error: <what>, <what to do>`, with a nonzero exit code; set
BLOGSTREAM_DEBUG=1 to see the traceback of an unexpected one.

The worker itself runs with `faust -A streams worker -l info`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from streams.cli.costs import costs
from streams.cli.health import health
from streams.cli.output import CliError
from streams.cli.retry import retry
from streams.cli.sites import sites
from streams.cli.submit import submit_command
from streams.cli.topics import topics

__all__ = ["cli", "main"]


class Cli(click.Group):
    """Turns what is not already a one-line error into one (no tracebacks for users)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError:
            raise
        except click.UsageError as exc:  # a bad option or argument of a subcommand
            where = exc.ctx.command_path if exc.ctx is not None else "blogstream"
            raise CliError(exc.format_message().rstrip("."), f"see {where} --help", exit_code=exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("BLOGSTREAM_DEBUG"):
                raise
            from streams.cli.connect import database_problem

            problem = database_problem(exc)
            if problem is not None:
                raise CliError(*problem) from None
            raise CliError(f"unexpected {type(exc).__name__}: {exc}",
                           "run it again with BLOGSTREAM_DEBUG=1 for the traceback and report it") from None


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="blogstream", prog_name="blogstream", message="%(prog)s %(version)s")
def cli() -> None:
    """Write and publish blog posts for many sites: submit requests, manage sites, retry, check health, costs."""


cli.add_command(submit_command, "submit")
cli.add_command(sites)
cli.add_command(retry)
cli.add_command(health)
cli.add_command(topics)
cli.add_command(costs)


def main(argv: list[str] | None = None) -> int:
    """The `blogstream` console script; returns the exit code (0 ok, 1 failed, 2 bad usage ...)."""
    try:
        cli.main(args=argv, prog_name="blogstream", standalone_mode=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
