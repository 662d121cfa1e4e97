"""Every request id the contract takes reaches its own routes through the URLs we hand out.

Ids are 1-128 characters of A-Z a-z 0-9 . _ : -, so "." and ".." are ids, and in a URL path they
are dot segments, which HTTP clients remove (RFC 3986 5.2.4; httpx, curl and browsers do). The
intake's Location for a request ".." was /api/blogs/.., which a client reads as /api: its status
could not be read where the intake said; `blogstream retry ..` posted to /api/retry, so a FAILED
request with such an id could not be retried by any of our tools. The URLs below are built the
way each client builds them (httpx) and resolved by the worker's own router.
"""
from __future__ import annotations

import asyncio
import importlib
from typing import Any
from unittest import mock
from urllib.parse import quote

import httpx
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from streams.api import intake
from streams.app import app
from tests.contract.robustness import IDS

for module in ("blogs", "intake", "sites"):  # they register the routes, as worker.py does
    importlib.import_module(f"streams.api.{module}")

ANY_ID = IDS | st.sampled_from([".", "..", "...", ".-", "a.", "..a"])


def reached(method: str, url: httpx.URL) -> tuple[str | None, dict[str, str]]:
    """(the route's canonical path, its match info) for the path a client sends for `url`."""
    request = make_mocked_request(method, url.raw_path.decode("ascii"), app=app.web.web_app)
    match = asyncio.run(app.web.web_app.router.resolve(request))
    resource = match.route.resource
    return (resource.canonical if resource is not None else None), dict(match)


@given(request_id=ANY_ID)
def test_the_intakes_location_reaches_the_request(request_id: str) -> None:
    async def accepted(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
        return [{"request_id": request_id}], False

    request = make_mocked_request("POST", "/api/blogs", headers={"Content-Type": "application/json"})

    async def answer() -> Any:
        with mock.patch.object(intake, "submit", accepted), mock.patch.object(intake, "read_body", _body):
            return await intake.post_blogs(request)

    response = asyncio.run(answer())
    assert response.status == 202
    followed = httpx.URL("http://worker:6066").join(response.headers["Location"])
    assert reached("GET", followed) == ("/api/blogs/{request_id}", {"request_id": request_id})


async def _body(request: Any, limit: int) -> bytes:
    return b"{}"


@given(request_id=ANY_ID)
def test_blogstream_retry_posts_to_the_requests_retry(request_id: str) -> None:
    retry = importlib.import_module("streams.cli.retry")  # (streams.cli.retry is also the command's name)

    sent: list[httpx.Request] = []

    def worker(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202, json={"request_id": request_id, "previous_error": "boom"})

    real = httpx.Client
    with mock.patch.object(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(worker), **kw)):
        report = retry.retry_each([request_id], "http://worker:6066", progress=False)
    assert report.retried == [{"request_id": request_id, "previous_error": "boom"}]
    (request,) = sent
    assert reached("POST", request.url) == ("/api/blogs/{request_id}/retry", {"request_id": request_id})


@given(request_id=st.text(st.sampled_from("./?#%:&=a-~ \\"), min_size=1, max_size=24)
       | st.sampled_from(["../sites/shop-1/pause?", "x/../../sites/shop-1/cancel#", "%2e%2e/sites/shop-1/pause?"]))
def test_any_text_given_to_blogstream_retry_reaches_that_ids_retry_or_nothing(request_id: str) -> None:
    """`retry --failed` posts every id of a FAILED row, rows the seed's system or SQL may have written, and an
    operator may paste anything: an id with '/', '?', '#' or '%' reached other routes ('../sites/shop-1/pause?'
    paused shop-1, with the admin token). The worker answers what is not an id 400."""
    retry = importlib.import_module("streams.cli.retry")
    sent: list[httpx.Request] = []

    def worker(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(400, json={"error": "request_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -"})

    real = httpx.Client
    with mock.patch.object(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(worker), **kw)):
        retry.retry_each([request_id], "http://worker:6066", progress=False)
    (request,) = sent
    route, match = reached("POST", request.url)
    assert request.url.query == b"" and route == "/api/blogs/{request_id}/retry", (request.url, route)
    assert match["request_id"] in (request_id, quote(request_id, safe=":"))  # the id itself, or as sent (400)
