"""Fields read from a provider's JSON answer, whose shape is not trusted.

A provider (or a proxy in front of it) may answer 200 with any JSON: every field
is read through these, so a wrong type is a missing field, never a TypeError.
"""
from __future__ import annotations

from typing import Any

__all__ = ["json_object", "json_text"]


def json_object(value: Any) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def json_text(value: Any) -> str | None:
    """A non-empty string, else None: ids, URLs, slugs and messages are text or they are missing."""
    return value if isinstance(value, str) and value else None
