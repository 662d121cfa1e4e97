"""Who may call which route, and the checks every HTTP call goes through before its route.

One aiohttp middleware (`guard`) on the worker's web app sees every call, Faust views and
plain handlers alike, and answers in our JSON error shape before the route runs:

- **403** for a mutating call (POST, PATCH, PUT, DELETE) from a browser page of another
  origin: an `Origin` header that is not this worker's own host (`Host`), `Origin: null`,
  or `Sec-Fetch-Site: cross-site`. Clients that are not browsers send neither and pass.
- **403** for a call to a route whose token is not set, addressed (`Host`) by a name that is
  neither an IP address, `localhost` nor one of BLOGSTREAM_WEB_ALLOWED_HOSTS: a page whose
  name an attacker points at this worker's address (DNS rebinding) is of the same origin as
  what it calls, so the origin check cannot tell; without a token nothing else would stop it.
- **401** without the route's token (`ACCESS`): the intake token for the intake, the
  admin token (BLOGSTREAM_ADMIN_TOKEN; the intake token when it is unset) for site
  controls, retries and the limiter's figures. The admin token opens the intake routes
  too. A route with no token set is open.
- **415** for a mutating call with a body that is not sent as JSON (`Content-Type:
  application/json` or `application/*+json`), for a route that takes a body without that
  type, and for any mutating call with a form or text type, body or not: those are what a
  page of another origin can send without asking first (a JSON type it cannot). The
  intake checks a missing type itself, after the size (an oversized body is 413).
- every other error (an unknown path, a method the route lacks, a body too large, a
  failure nobody caught) as `{"error": ...}` JSON too, never HTML or text.

A route missing from ACCESS needs the admin token: new routes are closed until listed.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from streams.api.http import ADMIN_UNAUTHORIZED, CHALLENGE, UNAUTHORIZED, bearer_ok, json_response
from streams.settings import settings

log = logging.getLogger(__name__)

INTAKE, ADMIN = "intake", "admin"
MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True)
class Access:
    token: str | None  # INTAKE, ADMIN, or None: open to anyone
    body: bool = False  # takes a JSON body (415 without Content-Type: application/json)
    type_checked_by_route: bool = False  # the route checks a missing Content-Type itself (the intake)


# (method, path as registered) -> who may call it. docs/openapi.json says the same per operation.
ACCESS: dict[tuple[str, str], Access] = {
    ("POST", "/api/blogs"): Access(INTAKE, body=True, type_checked_by_route=True),
    ("GET", "/api/blogs/{request_id}"): Access(INTAKE),
    ("GET", "/api/intake"): Access(INTAKE),
    ("GET", "/api/sites/{site_id}/blogs"): Access(INTAKE),
    ("POST", "/api/blogs/{request_id}/retry"): Access(ADMIN),
    ("GET", "/api/sites"): Access(ADMIN),
    ("GET", "/api/sites/{site_id}"): Access(ADMIN),
    ("PATCH", "/api/sites/{site_id}"): Access(ADMIN, body=True),
    ("POST", "/api/sites/{site_id}/pause"): Access(ADMIN),
    ("POST", "/api/sites/{site_id}/resume"): Access(ADMIN),
    ("POST", "/api/sites/{site_id}/cancel"): Access(ADMIN),
    ("GET", "/api/sites/{site_id}/costs"): Access(ADMIN),
    ("GET", "/api/limiter"): Access(ADMIN),
    ("GET", "/api/rate-limiter/stats"): Access(ADMIN),
    ("GET", "/api/replicate-rate-limiter/stats"): Access(ADMIN),
    ("GET", "/health"): Access(None),
    ("GET", "/metrics"): Access(None),
    ("GET", "/api/openapi.json"): Access(None),
}
CLOSED = Access(ADMIN)


def admin_token() -> str:
    return settings.admin_token or settings.intake_token


def authorized(access: Access, header: str | None) -> bool:
    if access.token == INTAKE:
        return bearer_ok(header, settings.intake_token, settings.admin_token)
    if access.token == ADMIN:
        return bearer_ok(header, admin_token())
    return True


def cross_origin(request: web.Request) -> bool:
    """A browser page of another origin made this call (see the module's docstring)."""
    headers = request.headers
    if headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        return True
    origin = headers.get("Origin")
    if origin is None:
        return False
    try:
        netloc = urlsplit(origin.strip()).netloc.lower()
    except ValueError:
        return True
    return not netloc or netloc != (request.host or "").lower()


def token_set(access: Access) -> bool:
    """The route needs a token (one is configured for it), or is public by design (no token in ACCESS)."""
    if access.token == INTAKE:
        return bool(settings.intake_token)
    if access.token == ADMIN:
        return bool(admin_token())
    return True


def host_name_trusted(host: str | None) -> bool:
    """`Host` names this worker by an IP address, localhost, or a name in BLOGSTREAM_WEB_ALLOWED_HOSTS."""
    try:
        name = (urlsplit(f"//{host or ''}").hostname or "").rstrip(".")
    except ValueError:
        return False
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    allowed = {h.strip().lower().rstrip(".") for h in settings.web_allowed_hosts.split(",") if h.strip()}
    return name == "localhost" or name.endswith(".localhost") or name in allowed


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def problem(request: web.Request, access: Access) -> web.Response | None:
    """The refusal for this call, or None when it may go to its route."""
    if not token_set(access) and not host_name_trusted(request.host):
        return json_response({"error": "this route has no token, so the worker answers it only when called by IP "
                                       "address or localhost: set BLOGSTREAM_INTAKE_TOKEN and BLOGSTREAM_ADMIN_TOKEN, "
                                       "or name this host in BLOGSTREAM_WEB_ALLOWED_HOSTS"}, 403)
    mutating = request.method in MUTATING
    if mutating and cross_origin(request):
        return json_response({"error": "cross-origin requests may not change anything here: call this API from "
                                       "a client or a page served by this worker, not from another site's page"}, 403)
    if not authorized(access, request.headers.get("Authorization")):
        return json_response(UNAUTHORIZED if access.token == INTAKE else ADMIN_UNAUTHORIZED, 401, CHALLENGE)
    if mutating and not json_body(request, access):
        return json_response({"error": "the body must be JSON: send it with Content-Type: application/json"}, 415)
    return None


# What a browser sends to another origin without asking first (CORS "simple" requests): a page can
# make these, so a call with one of them is refused even without a body (an empty form post).
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


def json_body(request: web.Request, access: Access) -> bool:
    """False when this mutating call's body or Content-Type is not JSON (415)."""
    content_type = request.headers.get("Content-Type")
    if content_type is None:  # a body route needs the type; the intake checks it after the size
        return not (access.body and not access.type_checked_by_route)
    if is_json(content_type):
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    # Another type is refused when there is a body (it is not JSON) or when a form could send it.
    return not (request.body_exists or access.body or media in FORM_TYPES)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is None:  # a route matched
        resource = match.route.resource
        path = resource.canonical if resource is not None else ""
        method = "GET" if request.method == "HEAD" else request.method
        refusal = problem(request, ACCESS.get((method, path), CLOSED))
        if refusal is not None:
            return refusal
    try:
        return await handler(request)
    except web.HTTPException as exc:  # no such path, a method the route lacks, a body too large
        if exc.status < 400:
            raise
        return json_response({"error": _reason(exc, request.method)}, exc.status,
                             {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return json_response({"error": "the worker failed to answer this request (its log says why); "
                                       "try again, and report it if it persists"}, 500)


def _reason(exc: web.HTTPException, method: str) -> str:
    if exc.status == 404:
        return "there is no such page: docs/openapi.json (GET /api/openapi.json) lists every route"
    if exc.status == 405:
        return f"this route does not take {method}: the Allow header lists what it takes"
    if exc.status == 413:
        return "the body is too large"
    return f"{exc.status} {exc.reason}"


class UnparsableRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a NUL in a header, a broken request line) at
    ERROR with a traceback, before any route: the client's mistake, answered 400, yet one
    client could fill the log with them. Such records become one INFO line a minute, with
    the count; nothing the client sent is repeated."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.count = 0
        self.logged_at = -interval

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 400) < 500:
            return True
        self.count += 1
        if time.monotonic() - self.logged_at < self.interval:
            return False
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "refused %d HTTP request(s) that could not be parsed (%s) in the last %.0f s", (
            self.count, type(exc).__name__, min(time.monotonic() - self.logged_at, self.interval))
        record.exc_info, record.exc_text = None, None
        self.count, self.logged_at = 0, time.monotonic()
        return True


unparsable = UnparsableRequests()


def install(app: web.Application) -> None:
    """Put `guard` on the worker's web app once (before it starts serving)."""
    if guard not in app.middlewares:
        app.middlewares.append(guard)
    server_log = logging.getLogger("aiohttp.server")
    if unparsable not in server_log.filters:
        server_log.addFilter(unparsable)
