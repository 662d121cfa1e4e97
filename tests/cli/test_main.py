"""The command as users meet it: --version, help, and errors as one line with a nonzero code, never a
traceback (run as a real process, as a shell runs it)."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.cli import cli, connect

ROOT = Path(__file__).resolve().parents[2]
BLOGSTREAM = str(ROOT / ".venv/bin/blogstream")
CLOSED_DB = "postgresql://blogstream:secret-pw@127.0.0.1:1/blogstream"  # port 1: nothing listens


def blogstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BLOGSTREAM, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_version_comes_from_the_package_metadata():
    done = blogstream("--version")
    assert (done.returncode, done.stdout) == (0, f"blogstream {version('blogstream')}\n")


def test_help_lists_every_command():
    out = CliRunner().invoke(cli, ["--help"]).output
    for command in ("submit", "sites", "retry", "health"):
        assert f"  {command} " in out
    sites_help = CliRunner().invoke(cli, ["sites", "--help"]).output
    for command in ("add", "list", "pause", "resume", "cancel", "set"):
        assert f"  {command} " in sites_help


@pytest.mark.parametrize("args", [["sites", "list"], ["sites", "pause", "x"], ["retry", "--failed", "--yes"]])
def test_an_unreachable_database_is_one_line_and_says_what_to_do(args):
    done = blogstream(*args, BLOGSTREAM_DATABASE_URL=CLOSED_DB)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("blogstream: error: the database is unreachable (cannot connect to "
                                  "postgresql://blogstream:***@127.0.0.1:1/blogstream")
    assert done.stderr.rstrip().endswith("start it (make stack-up) or check BLOGSTREAM_DATABASE_URL")
    assert "secret-pw" not in done.stderr


def test_health_with_nothing_reachable_says_down_with_exit_code_2():
    done = blogstream("health", "--worker", "http://127.0.0.1:1", "--json", BLOGSTREAM_DATABASE_URL=CLOSED_DB)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    import json
    report = json.loads(done.stdout)
    assert report["status"] == "down" and report["database"] is None
    assert [p.split(":")[0] for p in report["problems"]] == ["database", "worker"]


@pytest.mark.parametrize(("args", "message", "code"), [
    (["nosuch"], "blogstream: error: No such command 'nosuch', see blogstream --help", 2),
    (["sites", "set", "s1", "--weight", "1e999"],
     "blogstream: error: Invalid value for '--weight': inf must be a number from 0.01 to 100, see blogstream sites --help", 2),
    (["sites", "set", "s1", "--max-in-flight", "5000"],
     "blogstream: error: Invalid value for '--max-in-flight': 5000 must be from 1 to 1000, see blogstream sites --help", 2),
    (["sites", "set", "s1", "--weight", "0"],
     "blogstream: error: Invalid value for '--weight': 0.0 is not in the range x>0, see blogstream sites set --help", 2),
    (["submit"], "blogstream: error: submit needs --file, or --site and --topic, see blogstream submit --help", 2),
    (["retry"], "blogstream: error: retry needs REQUEST_IDs or --failed (not both), see blogstream retry --help", 2),
    (["retry", "--failed", "--since", "yesterday"],
     "blogstream: error: Invalid value for '--since': 'yesterday' is not a duration: give e.g. 30m, 1h, 2d or 1h30m, "
     "see blogstream retry --help", 2),
])
def test_bad_input_is_one_line(args, message, code):
    done = blogstream(*args)
    assert (done.returncode, done.stdout, done.stderr) == (code, "", message + "\n")


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch):
    def broken():
        raise KeyError("surprise")

    monkeypatch.setattr(connect, "settings", broken)
    result = CliRunner().invoke(cli, ["sites", "list"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == ("blogstream: error: unexpected KeyError: 'surprise', run it again with BLOGSTREAM_DEBUG=1 "
                             "for the traceback and report it\n")
    result = CliRunner().invoke(cli, ["sites", "list"], env={"BLOGSTREAM_DEBUG": "1"})
    assert isinstance(result.exception, KeyError)


def test_main_returns_the_exit_code():
    from streams.cli import main

    assert main(["--version"]) == 0
    assert main(["nosuch"]) == 2


def test_the_cli_module_runs_with_python_m():
    done = subprocess.run([sys.executable, "-m", "streams.cli", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("blogstream ")


@pytest.mark.parametrize("option", ["--max-in-flight", "--max-queued"])
def test_a_control_too_large_for_a_float_is_a_usage_error_not_an_unexpected_one(option):
    huge = "9" * 400  # click's IntRange takes it; the range check must not need a float of it
    result = CliRunner().invoke(cli, ["sites", "set", "s1", option, huge])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"blogstream: error: Invalid value for '{option}': {huge} must be from 1 to ")
    assert result.stderr.endswith(", see blogstream sites --help\n")
