"""What goes wrong with a record: `RecordError` (the whole record) and `FieldError` (one field).

Also the ids a failure is reported under: only well-formed ones, since they key a
results row or a DLQ header.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import quote

ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def path_segment(value: str) -> str:
    """An id as one segment of a URL path (`/api/blogs/<id>`). A well-formed id's characters need no escaping,
    but the ids "." and ".." are dot segments, which HTTP clients remove (RFC 3986): /api/blogs/.. is read as
    /api. Their dots go as %2E, which the worker's router reads back as the id. Any other text (an id pasted
    wrong, a row another system wrote) is percent-encoded whole: its '/', '?' or '#' cannot reach another
    route, and the worker answers it 400."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return value if ID.fullmatch(value) else quote(value, safe=":")


@dataclass(frozen=True)
class FieldError:
    """One problem with one field; `field` is a path like `topic`, `keywords[2]`, `usage.prompt_tokens`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class RecordError(ValueError):
    """Bytes or a dict that is not a valid record.

    `reason` is a short sentence for humans (DLQ headers, the results table);
    `request_id` / `site_id` are set when they could be read and are well-formed,
    so the caller can still record the request as FAILED.
    """

    def __init__(
        self,
        reason: str,
        *,
        request_id: str | None = None,
        site_id: str | None = None,
        errors: Sequence[FieldError] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id
        self.site_id = site_id
        self.errors: tuple[FieldError, ...] = tuple(errors)


def invalid(record_name: str, errors: Sequence[FieldError], value: Any) -> RecordError:
    """The error for a record with field errors: up to four of them in the reason, all in `errors`."""
    shown = "; ".join(str(error) for error in errors[:4])
    more = f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""
    return RecordError(f"invalid {record_name}: {shown}{more}", errors=errors, **ids(value))


def readable_id(value: Any) -> str | None:
    """An id worth reporting: only well-formed ones can key a results row or a DLQ header."""
    return value if isinstance(value, str) and ID.fullmatch(value) else None


def ids(value: Any) -> dict[str, str | None]:
    """request_id / site_id of a record (or of the request it carries), where well-formed."""
    if not isinstance(value, dict):
        return {"request_id": None, "site_id": None}
    source = value.get("request") if isinstance(value.get("request"), dict) else value
    return {"request_id": readable_id(source.get("request_id")), "site_id": readable_id(source.get("site_id"))}
