"""markdown_to_ricos in time linear in its input, whatever the model's article holds.

The body comes from the model, steered by a topic anyone may write, and may be 60,000
characters (streams/contract/rules.py). The heading pattern backtracked over a run of spaces
inside a heading line: "# a", 60,000 spaces, "b" took about 25 s of CPU on the worker's event
loop (publish builds the post there), a stall longer than the effect ledger's 30 s lease less
its 10 s renewal, and every stage, the intake and the claims' renewals of that worker waited.
"""
from __future__ import annotations

import re
import time

from hypothesis import given
from hypothesis import strategies as st

from connectors.wix_ricos import markdown_to_ricos
from streams.contract.rules import ARTICLE_TEXT

BODY_MAX = next(high for name, _, high, _ in ARTICLE_TEXT if name == "body")
CPU_SECONDS = 2.0  # a linear pass over 60,000 characters takes milliseconds; the backtracking took ~25 s

PREFIXES = st.sampled_from(["# ", "###### ", "#\t", "   # ", "- ", "* ", "1. ", "", "---", "**", "*"])
SPACES = st.sampled_from([" ", "\t", "\u00a0", "\u3000", " #", "# ", "* ", "*", "**", "- "])
TAILS = st.sampled_from(["b", "#", " #", "*", "**", "x*", ""])


@given(prefix=PREFIXES, run=SPACES, tail=TAILS, lines=st.integers(1, 3))
def test_any_line_of_a_body_is_read_in_linear_time(prefix: str, run: str, tail: str, lines: int) -> None:
    line = prefix + "a" + run * ((BODY_MAX // lines - len(prefix) - len(tail) - 2) // len(run)) + tail
    body = "\n".join([line] * lines)
    assert len(body) <= BODY_MAX
    started = time.process_time()
    markdown_to_ricos(body)
    spent = time.process_time() - started
    assert spent < CPU_SECONDS, f"{spent:.1f} s of CPU for {len(body)} characters ({line[:12]!r}...)"


# The heading rule as it was (it backtracks on long runs of spaces): the reference for short lines.
_OLD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")


def heading(line: str) -> tuple[int, str] | None:
    (node,) = markdown_to_ricos(line)["nodes"] or [None]
    if node is None or node["type"] != "HEADING":
        return None
    return node["headingData"]["level"], "".join(n["textData"]["text"] for n in node["nodes"])


@given(st.text(st.sampled_from("# \t\u00a0ab"), max_size=14))
def test_headings_read_as_before(line: str) -> None:
    match = _OLD_HEADING.match(line.rstrip())
    if match is None or not match.group(2):  # an empty heading has no text node: compared by level below
        found = heading(line)
        assert found is None if match is None else found == (len(match.group(1)), "")
        return
    assert heading(line) == (len(match.group(1)), match.group(2))
