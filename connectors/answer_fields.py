"""Fields read from a provider's JSON answer, whose shape is not trusted.

A provider (or a proxy in front of it) may answer 200 with any JSON: every field
is read through these, so a wrong type is a missing field, never a TypeError.
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["SDK_UNREADABLE_ERRORS", "json_object", "json_text", "read_json"]

# What the providers' SDKs raise on a body they cannot read: not JSON, nested past what the
# parser takes, or JSON their models trip over (not even an object: TypeError, AttributeError).
SDK_UNREADABLE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, RecursionError)


def read_json(data: bytes | str) -> Any:
    """The JSON value in `data`; ValueError when there is none, also for JSON nested past what
    the parser takes (its RecursionError is not a ValueError)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None


def json_object(value: Any) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def json_text(value: Any) -> str | None:
    """A non-empty string, else None: ids, URLs, slugs and messages are text or they are missing."""
    return value if isinstance(value, str) and value else None
