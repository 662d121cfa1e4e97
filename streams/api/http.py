"""What every HTTP route shares: error answers, strict JSON, the bearer token check.

Routes answer JSON only; an error is `{"error": "<one sentence: what, and what to do>", ...}`
with the status that says whether retrying can help (4xx never, 429/503 after Retry-After).
Every answer is strict JSON (RFC 8259): `json_response` refuses NaN and infinity
(`allow_nan=False`), and every route answers through it (`ApiView.answer`). Who may call
which route, and the checks every call goes through first, are in streams/api/access.py.
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


def bearer_ok(header: str | None, token: str, *also: str) -> bool:
    """Constant-time check of `Authorization: Bearer <token>` (or one of `also`); true when no token is set."""
    if not token:
        return True
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # aiohttp hands header bytes that are not UTF-8 over as lone surrogates (surrogateescape): back to those bytes
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    # Every candidate is compared (no early exit): the time does not say which one matched.
    return sum(hmac.compare_digest(given_bytes, t.encode()) for t in (token, *also) if t) > 0


def retry_after_header() -> dict[str, str]:
    return {"Retry-After": str(max(1, int(settings.intake_retry_after_seconds)))}


def unavailable(what: str) -> IntakeError:
    return IntakeError(
        503, f"nothing was accepted: {what}; retry in a moment with the same request ids",
        headers=retry_after_header(),
    )


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", **SECURITY_HEADERS}
UNAUTHORIZED = {"error": "missing or wrong intake token: send the header Authorization: Bearer <token>"}
ADMIN_UNAUTHORIZED = {"error": "missing or wrong admin token: send the header Authorization: Bearer <token> "
                               "(BLOGSTREAM_ADMIN_TOKEN, or the intake token when no admin token is set)"}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="blogstream"'}

_strict_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(body: Any) -> bytes:
    """Strict JSON: NaN and infinity are not JSON, so they raise ValueError instead of going out."""
    return _strict_json(body).encode()


def json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """Every JSON answer of every route: strict JSON, no caching, no sniffing."""
    return web.Response(
        body=dumps(body), status=status,
        headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS,
    )


class ApiView(View):
    """A Faust view whose answers (its own, and Faust's errors) go out through `json_response`."""

    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return json_response(body, status, headers)  # type: ignore[return-value]

    def failure(self, exc: IntakeError) -> Response:
        return self.answer(exc.body(), exc.status, exc.headers)

    async def on_request_error(self, request: Request, exc: Any) -> Response:
        # Faust's WebError (a method this view lacks, say) as our error shape.
        return self.answer({"error": str(exc.detail)}, exc.code)
