"""What every HTTP route shares: error answers, strict JSON, the bearer token check.

Routes answer JSON only; an error is `{"error": "<one sentence: what, and what to do>", ...}`
with the status that says whether retrying can help (4xx never, 429/503 after Retry-After).
"""
from __future__ import annotations

import hmac
import json
import re
from typing import Any, Mapping

from aiohttp import web
from faust.web import Request, Response, View

from streams.settings import settings

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # request and site ids


class IntakeError(Exception):
    """An answer other than 2xx: HTTP status, a one-sentence reason, optional details."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = dict(headers or {})
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.error, **self.details}


def bearer_ok(header: str | None, token: str) -> bool:
    """Constant-time check of `Authorization: Bearer <token>`; always true when no token is set."""
    if not token:
        return True
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def retry_after_header() -> dict[str, str]:
    return {"Retry-After": str(max(1, int(settings.intake_retry_after_seconds)))}


def unavailable(what: str) -> IntakeError:
    return IntakeError(
        503, f"nothing was accepted: {what}; retry in a moment with the same request ids",
        headers=retry_after_header(),
    )


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class ApiView(View):
    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return self.json(body, status=status, headers={**SECURITY_HEADERS, **(headers or {})})

    def failure(self, exc: IntakeError) -> Response:
        return self.answer(exc.body(), exc.status, exc.headers)

    def unauthorized(self, request: Request) -> Response | None:
        if bearer_ok(request.headers.get("Authorization"), settings.intake_token):
            return None
        return self.answer(
            {"error": "missing or wrong intake token: send the header Authorization: Bearer <token>"},
            401, {"WWW-Authenticate": 'Bearer realm="blogstream"'},
        )


JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", **SECURITY_HEADERS}
UNAUTHORIZED = {"error": "missing or wrong intake token: send the header Authorization: Bearer <token>"}


_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """The same answer as `View.json` (`ApiView.answer`), built without Faust's view layer."""
    return web.Response(
        body=_compact_json(body).encode(), status=status,
        headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS,
    )
