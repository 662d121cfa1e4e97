"""How `blogstream` answers: one-line errors, JSON on stdout, aligned tables.

Errors are one line on stderr, `blogstream: error: <what>, <what to do>`, with a
nonzero exit code and no traceback; `--json` output is the only thing on stdout.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click


class CliError(click.ClickException):
    """What went wrong and what to do about it, printed as one line (exit code 1 unless told)."""

    def __init__(self, what: str, todo: str = "", *, exit_code: int = 1) -> None:
        super().__init__(f"{what}, {todo}" if todo else what)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"blogstream: error: {self.message}", file=file, err=file is None)


def warn(message: str) -> None:
    click.echo(f"blogstream: warning: {message}", err=True)


def emit_json(value: Any) -> None:
    """The machine-readable answer of a command: one JSON document on stdout."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def say(text: str, *, as_json: bool) -> None:
    """A human line: stdout normally, stderr when stdout is reserved for JSON."""
    click.echo(text, err=as_json)


def interactive() -> bool:
    """Someone at a terminal can answer a prompt (stdin is a TTY)."""
    return sys.stdin.isatty()


def columns(table: list[list[str]]) -> list[str]:
    """Rows as aligned columns: the first (a name) left, the figures right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    ]


def listed(lines: list[str], *, limit: int = 50, more: str = "more") -> None:
    """Print up to `limit` lines to stderr, then how many were left out."""
    for line in lines[:limit]:
        click.echo(line, err=True)
    if len(lines) > limit:
        click.echo(f"... and {len(lines) - limit} {more}", err=True)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout (and nothing else there)."
)
worker_option = click.option(
    "--worker", metavar="URL", default=None,
    help="Any worker's web address [default: http://127.0.0.1:BLOGSTREAM_WEB_PORT, i.e. :6066].",
)
