"""The control plane's rules without a worker: tokens, origins, content types, strict JSON, control ranges.

`access.guard` runs on a plain aiohttp app whose routes have the worker's paths, so every
rule is checked as a client meets it (status, JSON body, headers).
"""
from __future__ import annotations

import json
import math
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from store.sites import CONTROL_RANGES, _check_controls, control_problem
from streams.api import access
from streams.api.http import dumps, json_response
from streams.api.sites import parse_controls, parse_json
from streams.settings import Settings

INTAKE, ADMIN = "intake-secret", "admin-secret"


async def ok(request: web.Request) -> web.Response:
    return json_response({"ok": True, "body": (await request.read()).decode() or None}, 200)


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def nan(request: web.Request) -> web.Response:
    return json_response({"weight": math.inf}, 200)


@pytest.fixture
async def client():
    app = web.Application(client_max_size=1024)
    for method, path in access.ACCESS:
        app.router.add_route(method, path.replace("{site_id}", "{site_id}"), ok)
    app.router.add_get("/api/boom", boom)
    app.router.add_get("/api/nan", nan)
    access.install(app)
    access.install(app)  # once only
    assert app.middlewares.count(access.guard) == 1
    async with TestClient(TestServer(app)) as c:
        yield c


def tokens(intake: str = "", admin: str = ""):
    return mock.patch.object(access, "settings", Settings.from_env(intake_token=intake, admin_token=admin))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_token_set_everything_is_open(client):
    with tokens():
        assert (await client.get("/api/limiter")).status == 200
        assert (await client.post("/api/sites/shop-1/pause")).status == 200
        assert (await client.post("/api/blogs", json={"x": 1})).status == 200


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/sites/shop-1/pause"), ("POST", "/api/sites/shop-1/resume"), ("POST", "/api/sites/shop-1/cancel"),
    ("PATCH", "/api/sites/shop-1"), ("GET", "/api/sites/shop-1"), ("GET", "/api/sites"),
    ("POST", "/api/blogs/r1/retry"), ("GET", "/api/limiter"), ("GET", "/api/rate-limiter/stats"),
    ("GET", "/api/replicate-rate-limiter/stats"),
])
async def test_control_plane_routes_need_the_admin_token_or_the_intake_token_without_one(client, method, path):
    kw = {"json": {"paused": True}} if method == "PATCH" else {}
    with tokens(intake=INTAKE):  # no admin token: the intake token opens them
        assert (await client.request(method, path, **kw)).status == 401
        assert (await client.request(method, path, headers=bearer(INTAKE), **kw)).status == 200
    with tokens(intake=INTAKE, admin=ADMIN):  # an admin token: only it does
        for headers in ({}, bearer(INTAKE), bearer("wrong"), {"Authorization": ADMIN}):
            answer = await client.request(method, path, headers=headers, **kw)
            assert answer.status == 401, headers
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert "admin token" in (await answer.json())["error"] and ADMIN not in await answer.text()
        assert (await client.request(method, path, headers=bearer(ADMIN), **kw)).status == 200


@pytest.mark.parametrize("method, path", [("POST", "/api/blogs"), ("GET", "/api/blogs/r1"), ("GET", "/api/intake"),
                                          ("GET", "/api/sites/shop-1/blogs")])
async def test_intake_routes_take_the_intake_or_the_admin_token(client, method, path):
    kw = {"json": {}} if method == "POST" else {}
    with tokens(intake=INTAKE, admin=ADMIN):
        assert (await client.request(method, path, **kw)).status == 401
        assert "intake token" in (await (await client.request(method, path, **kw)).json())["error"]
        assert (await client.request(method, path, headers=bearer(INTAKE), **kw)).status == 200
        assert (await client.request(method, path, headers=bearer(ADMIN), **kw)).status == 200
    with tokens(admin=ADMIN):  # intake auth off: open
        assert (await client.request(method, path, **kw)).status == 200


@pytest.mark.parametrize("path", ["/health", "/metrics", "/api/openapi.json"])
async def test_health_metrics_and_the_description_are_open(client, path):
    with tokens(intake=INTAKE, admin=ADMIN):
        assert (await client.get(path)).status == 200


async def test_a_route_nobody_listed_is_closed(client):
    with tokens(admin=ADMIN):
        assert (await client.get("/api/boom")).status == 401


async def raw_answer(client, request: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one request written byte for byte, as a client that is not aiohttp may send it."""
    import asyncio

    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.parametrize("token", [b"\xff\xfe", b"admin-secret\xff", b"\xc3"])
async def test_a_token_that_is_not_utf8_is_a_401_not_a_crash(client, token):
    # A header's bytes that are not UTF-8 reach us as lone surrogates (aiohttp's surrogateescape).
    with tokens(intake=INTAKE, admin=ADMIN):
        for method, path in [("POST", "/api/sites/shop-1/pause"), ("GET", "/api/blogs/r1"), ("POST", "/api/blogs")]:
            status, head, body = await raw_answer(client, (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
                + b"Authorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"))
            assert status == 401, (method, path, head, body)
            assert b"application/json" in head and b"WWW-Authenticate: Bearer" in head
            assert "token" in json.loads(body)["error"]


@pytest.mark.parametrize("name", ["Authorization", "Origin", "Sec-Fetch-Site", "Content-Type", "X-Request-Id"])
@pytest.mark.parametrize("value", [b"\xff\xfe", b"\xc3", b"Bearer \x80abc", b"application/json\xe9", b"null\xa0"])
@pytest.mark.parametrize("with_tokens", [True, False])
async def test_any_header_whose_bytes_are_not_utf8_is_answered_never_a_500(client, name, value, with_tokens):
    """The class of the token case above: every header the guard reads, on every route it guards."""
    with tokens(intake=INTAKE, admin=ADMIN) if with_tokens else tokens():
        for method, path in access.ACCESS:
            status, head, body = await raw_answer(client, (
                f"{method} {path.replace('{site_id}', 'shop-1')} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
                + name.encode() + b": " + value + b"\r\nConnection: close\r\n\r\n"))
            assert status < 500, (method, path, head, body)
            if status >= 400:
                assert b"application/json" in head and json.loads(body)["error"], (method, path, head, body)


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "Cross-Site", "Origin": "ignored"},
])
async def test_a_page_of_another_origin_cannot_change_anything(client, headers):
    with tokens():
        for method, path in [(m, p) for m, p in access.ACCESS if m in access.MUTATING]:
            answer = await client.request(method, path.format(site_id="shop-1", request_id="r1"),
                                          headers=headers, json={"paused": True})
            assert answer.status == 403, (method, path)
            assert "cross-origin" in (await answer.json())["error"]
        assert (await client.get("/api/sites/shop-1", headers=headers)).status == 200  # reading is not refused


async def test_the_workers_own_origin_and_same_site_fetches_pass(client):
    own = f"http://{client.server.host}:{client.server.port}"
    with tokens():
        for headers in ({"Origin": own}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
            assert (await client.post("/api/sites/shop-1/pause", headers=headers)).status == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          "text/plain; charset=utf-8", "application/jsonx"])
async def test_a_body_that_is_not_json_is_refused(client, content_type):
    with tokens():
        for method, path in [("POST", "/api/sites/shop-1/cancel"), ("PATCH", "/api/sites/shop-1"),
                             ("POST", "/api/blogs"), ("POST", "/api/blogs/r1/retry")]:
            answer = await client.request(method, path, data=b"paused=true", headers={"Content-Type": content_type})
            assert answer.status == 415, (method, path)
            assert "Content-Type: application/json" in (await answer.json())["error"]


async def test_json_types_pass_and_a_body_route_needs_one(client):
    with tokens():
        for content_type in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
            answer = await client.patch("/api/sites/shop-1", data=b"{}", headers={"Content-Type": content_type})
            assert answer.status == 200
        untyped = {"skip_auto_headers": ["Content-Type"]}
        assert (await client.patch("/api/sites/shop-1", data=b"{}", **untyped)).status == 415  # no type at all
        assert (await client.post("/api/blogs", data=b"{}", **untyped)).status == 200  # the intake checks it later
        assert (await client.post("/api/sites/shop-1/pause", **untyped)).status == 200  # no body, no type: fine
        assert (await client.post("/api/sites/shop-1/pause")).status == 200  # aiohttp's octet-stream, no body
        assert (await client.post("/api/blogs", data=b"{}")).status == 415  # octet-stream with a body


async def test_every_other_error_is_json(client):
    with tokens():
        for method, path, status in [("GET", "/nope", 404), ("DELETE", "/api/sites/shop-1", 405),
                                     ("GET", "/api/boom", 500), ("GET", "/api/nan", 500)]:
            answer = await client.request(method, path)
            assert answer.status == status, path
            assert answer.headers["Content-Type"].startswith("application/json")
            assert isinstance((await answer.json())["error"], str)
        too_big = await client.patch("/api/sites/shop-1", data=b"x" * 5000, headers={"Content-Type": "application/json"})
        assert too_big.status == 413 and (await too_big.json())["error"]


def test_answers_are_strict_json():
    for value in (math.nan, math.inf, -math.inf, {"a": [1.0, math.nan]}):
        with pytest.raises(ValueError):
            dumps(value)
    assert json.loads(dumps({"w": 1e308, "t": "é<script>"})) == {"w": 1e308, "t": "é<script>"}


@pytest.mark.parametrize("body, wrong", [
    ({"weight": 1e999}, "weight"), ({"weight": math.nan}, "weight"), ({"weight": 0}, "weight"),
    ({"weight": 0.001}, "weight"), ({"weight": 100.5}, "weight"), ({"weight": True}, "weight"),
    ({"weight": "2"}, "weight"), ({"max_in_flight": 2.5}, "max_in_flight"), ({"max_in_flight": 0}, "max_in_flight"),
    ({"max_in_flight": 1001}, "max_in_flight"), ({"max_in_flight": 10**30}, "max_in_flight"),
    ({"max_queued": 100_001}, "max_queued"), ({"max_queued": -1}, "max_queued"), ({"paused": 1}, "paused"),
    ({"colour": "red"}, "colour"),
    # integers too large for a float (JSON allows them, and parse_json takes up to 4,300 digits)
    ({"weight": 10**400}, "weight"), ({"max_in_flight": 10**400}, "max_in_flight"),
    ({"max_queued": -(10**400)}, "max_queued"), ({"monthly_budget_usd": 10**400}, "monthly_budget_usd"),
    ({"daily_budget_usd": -(10**309)}, "daily_budget_usd"),
])
def test_site_controls_are_finite_and_in_range(body, wrong):
    controls, errors = parse_controls(body)
    assert controls == {} and len(errors) == 1 and errors[0].startswith(wrong)


def test_site_controls_in_range_pass_and_match_the_store():
    controls, errors = parse_controls({"weight": 0.01, "max_in_flight": 1000.0, "max_queued": 1, "paused": False})
    assert errors == [] and controls == {"weight": 0.01, "max_in_flight": 1000, "max_queued": 1, "paused": False}
    assert isinstance(controls["max_in_flight"], int)
    for name, (low, high) in CONTROL_RANGES.items():
        for value in (low, high):
            assert control_problem(name, value) is None
            _check_controls(**{k: (value if k == name else None) for k in CONTROL_RANGES})
        for value in (low - 1 if name != "weight" else low / 2, high + 1, math.inf, math.nan):
            assert control_problem(name, value) is not None
            with pytest.raises(ValueError, match=name):
                _check_controls(**{k: (value if k == name else None) for k in CONTROL_RANGES})


def test_a_patch_body_with_an_integer_too_large_for_a_float_is_a_400_naming_the_field():
    body, wrong = parse_json(b'{"max_in_flight": ' + b"9" * 400 + b"}")
    assert wrong is None and body == {"max_in_flight": int("9" * 400)}  # it is JSON: it reaches parse_controls
    controls, errors = parse_controls(body)
    assert controls == {} and errors == ["max_in_flight: must be from 1 to 1000"]


@pytest.mark.parametrize("raw, words", [
    (b'{"weight": NaN}', "NaN is not a JSON number"), (b'{"weight": Infinity}', "Infinity"),
    (b'{"weight": -Infinity}', "Infinity"), (b"\xff", "not UTF-8"), (b"{", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"), (b'{"weight": ' + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_a_patch_body_is_strict_json(raw, words):
    value, wrong = parse_json(raw)
    assert value is None and words in wrong


def test_the_admin_token_is_a_setting_and_never_shown():
    s = Settings.from_env(admin_token="adm", intake_token="tok")
    assert s.redacted()["admin_token"] == "***" and s.redacted()["intake_token"] == "***"
    assert Settings.from_env().redacted()["admin_token"] == ""


def test_requests_aiohttp_cannot_parse_are_one_line_a_minute_without_a_traceback():
    import logging

    from aiohttp.http_exceptions import BadHttpMessage

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    server_log = logging.getLogger("aiohttp.server")
    handler, quiet = Keep(), access.UnparsableRequests(interval=60.0)
    server_log.removeFilter(access.unparsable)  # the worker's own, installed by the fixtures above
    server_log.addHandler(handler)
    server_log.addFilter(quiet)
    try:
        for _ in range(50):
            try:
                raise BadHttpMessage("Invalid header value char: b'X: \\x00 secret'")
            except BadHttpMessage as exc:
                server_log.error("Error handling request from %s", "127.0.0.1", exc_info=exc)
        server_log.error("a real failure", exc_info=RuntimeError("bug"))
    finally:
        server_log.removeHandler(handler)
        server_log.removeFilter(quiet)
    assert [r.levelname for r in seen] == ["INFO", "ERROR"]
    assert seen[0].exc_info is None and "secret" not in seen[0].getMessage()
    assert quiet.count == 49  # counted, said with the next line


def hosts(allowed: str = "", intake: str = "", admin: str = ""):
    return mock.patch.object(access, "settings", Settings.from_env(intake_token=intake, admin_token=admin,
                                                                   web_allowed_hosts=allowed))


@pytest.mark.parametrize("host", ["evil.example:6066", "evil.example", "attacker.test.:80", "127.0.0.1.nip.io:6066",
                                  "localhost.evil.example", "", "[not-an-ip]:1"])
async def test_without_a_token_a_call_by_another_host_name_is_refused(client, host):
    """DNS rebinding: a page at evil.example, its name pointed at 127.0.0.1, is same-origin with what it calls."""
    with hosts():
        for method, path in [("POST", "/api/sites/s/pause"), ("GET", "/api/sites"), ("GET", "/api/blogs/r"),
                             ("POST", "/api/blogs")]:
            headers = {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json"}
            resp = await client.request(method, path, headers=headers, data="{}")
            assert resp.status == 403, (method, path, host)
            assert "BLOGSTREAM_WEB_ALLOWED_HOSTS" in (await resp.json())["error"]
        for public in ("/health", "/metrics", "/api/openapi.json"):  # no token by design: any name
            assert (await client.get(public, headers={"Host": host})).status == 200


@pytest.mark.parametrize("host", ["127.0.0.1:6066", "10.0.0.5", "[::1]:6066", "localhost:6066", "LOCALHOST",
                                  "worker.localhost:1", "blogstream-worker-1:6066", "Ops.Example.COM."])
async def test_without_a_token_ip_addresses_localhost_and_allowed_names_are_served(client, host):
    with hosts(allowed="blogstream-worker-1,ops.example.com"):
        resp = await client.post("/api/sites/s/pause", headers={"Host": host})
        assert resp.status == 200, host


async def test_with_tokens_set_any_host_name_is_served_with_the_token(client):
    """A page cannot send the bearer token: the token is the protection, whatever the name."""
    with hosts(intake=INTAKE, admin=ADMIN):
        headers = {"Host": "evil.example:6066"}
        assert (await client.get("/api/sites", headers={**headers, **bearer(ADMIN)})).status == 200
        assert (await client.get("/api/sites", headers=headers)).status == 401
        assert (await client.get("/api/blogs/r", headers={**headers, **bearer(INTAKE)})).status == 200
