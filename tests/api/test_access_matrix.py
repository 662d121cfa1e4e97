"""Every route the worker registers x every credential, through the worker's own router and guard.

tests/api/test_access.py checks the guard's rules on a copy of the routes; here the paths are
resolved by the worker's aiohttp router itself (the routes streams/api/* register), so a path
written another way (a trailing slash, an encoded slash, other case, a dot segment, a lookalike
character, HEAD) is checked against what it really reaches. The expected token of each route is
written out below, not read from access.ACCESS.

There is no site-scoped credential: the intake token is every site's (docs/intake.md, "Reading
is by id, for operators"), the admin token is the operator's. What must hold: the intake token
never reaches a control, a retry, a site's costs or the limiter's figures once an admin token is
set, and no spelling of a path reaches a route with a weaker token than its own.
"""
from __future__ import annotations

import importlib
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from streams.api import access
from streams.app import app
from streams.settings import Settings

for module in ("blogs", "costs", "intake", "ops", "sites"):  # they register the routes, as worker.py does
    importlib.import_module(f"streams.api.{module}")

INTAKE, ADMIN = "intake-secret", "admin-secret"
OPEN = {("GET", "/health"), ("GET", "/metrics"), ("GET", "/api/openapi.json")}
INTAKE_ROUTES = {("POST", "/api/blogs"), ("GET", "/api/blogs/r1"), ("GET", "/api/intake"),
                 ("GET", "/api/sites/shop-1/blogs")}
ADMIN_ROUTES = {
    ("POST", "/api/blogs/r1/retry"), ("GET", "/api/sites"), ("GET", "/api/sites/shop-1"),
    ("PATCH", "/api/sites/shop-1"), ("POST", "/api/sites/shop-1/pause"), ("POST", "/api/sites/shop-1/resume"),
    ("POST", "/api/sites/shop-1/cancel"), ("GET", "/api/sites/shop-1/costs"), ("GET", "/api/limiter"),
    ("GET", "/api/rate-limiter/stats"), ("GET", "/api/replicate-rate-limiter/stats"),
}
ROUTES = sorted(OPEN | INTAKE_ROUTES | ADMIN_ROUTES)
CREDENTIALS = {"none": None, "wrong": "Bearer nope", "intake": f"Bearer {INTAKE}", "admin": f"Bearer {ADMIN}",
               "admin without scheme": ADMIN, "intake as basic": f"Basic {INTAKE}"}


def expected(route: tuple[str, str], credential: str, *, admin_set: bool) -> bool:
    """May this credential call this route (intake token set; admin token set or not)?"""
    if route in OPEN:
        return True
    admin_token = "admin" if admin_set else "intake"  # without an admin token, the intake token is it
    accepted = {"intake", admin_token} if route in INTAKE_ROUTES else {admin_token}
    return credential in accepted


async def through_guard(method: str, path: str, authorization: str | None) -> tuple[int, str | None]:
    """(status, the canonical path of the route reached or None), with the worker's router and the real guard."""
    headers = {"Authorization": authorization} if authorization else {}
    if method in access.MUTATING:
        headers["Content-Type"] = "application/json"
    request = make_mocked_request(method, path, headers=headers, app=app.web.web_app)
    match = await app.web.web_app.router.resolve(request)
    request._match_info = match  # what aiohttp does before the middlewares
    reached: list[str] = []

    async def handler(req: web.Request) -> web.Response:
        if match.http_exception is not None:
            raise match.http_exception
        reached.append(match.route.resource.canonical)
        return web.json_response({"ok": True})

    answer = await access.guard(request, handler)
    return answer.status, reached[0] if reached else None


def tokens(admin: str):
    return mock.patch.object(access, "settings", Settings.from_env(intake_token=INTAKE, admin_token=admin))


def test_the_matrix_covers_every_registered_route():
    registered = {(r.method, r.resource.canonical) for r in app.web.web_app.router.routes()
                  if r.method not in ("HEAD", "OPTIONS")}
    named = {(m, p.replace("r1", "{request_id}").replace("shop-1", "{site_id}")) for m, p in ROUTES}
    assert registered == named


@pytest.mark.parametrize("admin_set", [True, False], ids=["admin token set", "intake token only"])
@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_every_route_with_every_credential(route, credential, admin_set):
    with tokens(ADMIN if admin_set else ""):
        status, reached = await through_guard(*route, CREDENTIALS[credential])
    if expected(route, credential, admin_set=admin_set):
        assert status == 200 and reached is not None, (route, credential, status)
    else:
        assert status == 401 and reached is None, (route, credential, status)


# Other spellings of control-plane paths: each either reaches nothing or reaches an admin route.
TRICKS = [
    ("POST", "/api/sites/shop-1/pause/"), ("POST", "/api/sites/shop-1//pause"), ("POST", "/API/sites/shop-1/pause"),
    ("POST", "/api/Sites/shop-1/pause"), ("POST", "/api/sites/shop-1/PAUSE"), ("POST", "/api/sites/shop-1%2Fpause"),
    ("POST", "/api/sites/shop-1%2fcancel"), ("POST", "/api/sites/shop-1/./cancel"),
    ("POST", "/api/sites/shop-1/blogs/../cancel"), ("POST", "/api/sites/shop-1/pause."),
    ("POST", "/api/sites/shop-1/pau%73e"), ("POST", "/api/sites/shop-1/p\u0430use"),  # Cyrillic a
    ("GET", "/api/sites/shop-1/blogs/../costs"), ("GET", "/api/sites/shop-1%2Fcosts"),
    ("GET", "/api/sites/shop-1/costs%3F/blogs"), ("GET", "/api/sites/shop-1/blogs%2F..%2Fcosts"),
    ("GET", "/api/blogs/r1/../../sites"), ("GET", "/api/blogs/..%2Fsites"), ("GET", "/api/blogs/r1%2Fretry"),
    ("POST", "/api/blogs/r1%2Fretry"), ("POST", "/api/blogs/r1/retry/"), ("POST", "/api/blogs/%2E%2E/sites/x/pause"),
    ("PATCH", "/api/sites/shop-1/blogs/.."), ("HEAD", "/api/sites/shop-1/costs"), ("HEAD", "/api/limiter"),
    ("GET", "/api/intake/../limiter"), ("GET", "/api/intake%2F..%2Flimiter"), ("GET", "//api/limiter"),
    ("GET", "/metrics/../api/limiter"), ("GET", "/health/..%2Fapi%2Flimiter"), ("GET", "/api/openapi.json/../../api/sites"),
]
WEAKER = {p.replace("r1", "{request_id}").replace("shop-1", "{site_id}") for _, p in OPEN | INTAKE_ROUTES}


@pytest.mark.parametrize("method, path", TRICKS)
async def test_no_spelling_of_a_path_reaches_a_control_with_the_intake_token(method, path):
    with tokens(ADMIN):
        status, reached = await through_guard(method, path, f"Bearer {INTAKE}")
    if reached is not None:  # it reached a route: one the intake token may call
        assert reached in WEAKER, (method, path, reached)
    else:
        assert status in (401, 404, 405), (method, path, status)
