"""`blogstream topics tail` shows any record on a terminal as text, never as terminal commands.

Any producer may write any key to blog.requests, and `topics tail blog.dlq` is where an operator
looks at what was refused. The key was printed as it came: ESC sequences in it moved the cursor,
cleared lines (hiding the records around it), set the window title or the clipboard (OSC 52), and a
line break in it forged a record line of its own. Now every character that is not printable is
shown escaped, in the key and in the headers a dead letter carries.
"""
from __future__ import annotations

import importlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

topics = importlib.import_module("streams.cli.topics")  # (streams.cli.topics is also the group's name)

HOSTILE_KEYS = st.binary(max_size=40) | st.sampled_from([
    b"\x1b[2J\x1b[H", b"\x1b]52;c;ZXZpbA==\x07", b"\x1b]0;title\x07", b"shop-1\nfake line", b"\r\x1b[2K",
    "\u202eevil".encode(), "\u009b31m".encode(), b"\x00\x7f"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=HOSTILE_KEYS, topic=st.sampled_from(["blog.requests", "blog.dlq", "blog.results"]))
def test_no_key_reaches_the_terminal_as_a_control(run: Any, monkeypatch: Any, key: bytes, topic: str) -> None:
    async def tail(base: str, count: int, follow: bool, emit: Any) -> int:
        headers = [("blogstream-error", b"bad"), ("blogstream-stage", b"generate"),
                   ("blogstream-source", key)] if base == "blog.dlq" else []
        emit({"partition": 0, "offset": 7, "time": "2026-01-01T00:00:00+00:00",
              **topics.describe(base, key, b'{"broken": true', headers)})
        return 1

    monkeypatch.setattr(topics, "tail", tail)
    result = run("topics", "tail", topic, "--no-follow")
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == (3 if topic == "blog.dlq" else 2), lines
    assert all(c.isprintable() for line in lines for c in line), result.stdout


def test_a_results_record_written_by_another_producer_is_shown_as_text(run: Any, monkeypatch: Any) -> None:
    from streams.contract import encode

    value = encode("BlogResult", {"request_id": "r-1", "site_id": "shop-1", "status": "FAILED", "stage": "publish",
                                  "finished_at": 1_750_000_000_000, "error": "\u009b2J\u202eneddih \x1b[8m"})

    async def tail(base: str, count: int, follow: bool, emit: Any) -> int:
        emit({"partition": 0, "offset": 1, "time": "t", **topics.describe(base, b"shop-1", value, [])})
        return 1

    monkeypatch.setattr(topics, "tail", tail)
    result = run("topics", "tail", "blog.results", "--no-follow")
    assert result.exit_code == 0 and result.stdout.count("\n") == 1
    assert all(c.isprintable() for c in result.stdout.rstrip("\n")), result.stdout
