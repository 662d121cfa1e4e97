"""JSON that people send, read one way at every door: the HTTP intake, the site controls, `blogstream submit`.

RFC 8259, with what Python's parser would do beyond it named instead:
- a UTF-8 byte order mark at the start is skipped (RFC 8259 section 8.1 lets a parser ignore it;
  Windows editors write one);
- refused, each with its reason: nothing but whitespace, bytes that are not UTF-8, `NaN` and
  `Infinity` (not JSON), a key twice in one object (parsers disagree on which one counts, so a
  check upstream may have seen the other), nesting deeper than the parser takes, and an integer
  of more than 4,300 digits (Python's limit);
- a number too large for a float (`1e400`) reads as infinity, and every door's field checks
  refuse it there, naming the field; so does text with a lone surrogate (`"\\ud800"`, valid JSON
  with no UTF-8 form).

`NotJson.reason` completes a sentence: "the body is <reason>", "line 3: <reason>".
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["NotJson", "read_json"]

BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"  # JSON's own whitespace
_SHOWN_KEY = 40  # characters of a repeated key a reason shows


class NotJson(ValueError):
    """Bytes that are not JSON we take; `reason` says why, e.g. "not valid JSON: Expecting value at column 5"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Refused(ValueError):
    """Raised from inside the parser (a constant, a repeated key): its text is the reason."""


def _constant(name: str) -> Any:
    raise _Refused(f"not valid JSON: {name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        shown = json.dumps(key if len(key) <= _SHOWN_KEY else key[:_SHOWN_KEY] + "...")  # ASCII: printable as is
        raise _Refused(f"not valid JSON for us: the key {shown} appears twice in one object")
    return value


def _where(exc: json.JSONDecodeError) -> str:
    return f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"


def read_json(raw: bytes) -> Any:
    """The JSON value of `raw` (UTF-8, an optional BOM first); NotJson naming the problem otherwise."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    if not raw.strip(_WHITESPACE):
        raise NotJson("empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJson(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise NotJson(f"not valid JSON: {exc.msg} at {_where(exc)}") from None
    except _Refused as exc:
        raise NotJson(str(exc)) from None
    except RecursionError:
        raise NotJson("not valid JSON for us: nested too deeply") from None
    except ValueError:  # int() past Python's 4,300 digits, the only other ValueError the parser raises
        raise NotJson("not valid JSON for us: a number has too many digits") from None
