"""The wire hook (streams/limiter/wire.py): a permit used after its use-by is reported to the coordinator
before its request leaves, whichever HTTP client the connector sends through, and a permitted call that
is on time sends nothing extra."""
from __future__ import annotations

import time

import httpx
import openai
import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from streams.limiter import client, wire
from streams.limiter.client import Permit, current_permit


@pytest.fixture
async def provider():
    """A provider that notes when each request arrives, in the order of the events list."""
    events: list[tuple[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        events.append(("arrived", request.path))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", events
    finally:
        await runner.cleanup()


@pytest.fixture
def reports(monkeypatch, provider):
    _, events = provider
    sent: list[Permit] = []

    async def report_late(permit: Permit, anchor: float) -> None:
        events.append(("reported", permit.grant_id))
        sent.append(permit)

    monkeypatch.setattr(client.budgets, "report_late", report_late)
    wire.install()
    return sent


def _client(kind: str, base_url: str):
    if kind == "httpx over aiohttp":  # Wix, Replicate
        return httpx.AsyncClient(base_url=base_url, transport=AiohttpTransport())
    if kind == "httpx (httpcore)":  # the default transport
        return httpx.AsyncClient(base_url=base_url)
    return openai.DefaultAioHttpClient(base_url=base_url)  # the openai SDK's client


KINDS = ["httpx over aiohttp", "httpx (httpcore)", "openai over aiohttp"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_late_permit_is_reported_before_its_request_leaves_and_only_once(kind, provider, reports):
    base_url, events = provider
    async with _client(kind, base_url) as http:
        late = Permit("g-late", use_by=time.time() - 1.0, needs={"wix_requests:s": 1}, waited=0.0,
                      last_use=time.time() + 10.0)
        current_permit.set(late)
        await http.get("/first")
        await http.get("/second")  # the same permit's second request: it already left
    assert events == [("reported", "g-late"), ("arrived", "/first"), ("arrived", "/second")]
    assert late.sent_at is not None


@pytest.mark.parametrize("kind", KINDS)
async def test_a_permit_on_time_sends_nothing_extra_and_unpermitted_calls_pass(kind, provider, reports):
    base_url, events = provider
    async with _client(kind, base_url) as http:
        await http.get("/no-permit")
        on_time = Permit("g-ok", use_by=time.time() + 60.0, needs={"wix_requests:s": 1}, waited=0.0)
        current_permit.set(on_time)
        await http.get("/on-time")
    assert events == [("arrived", "/no-permit"), ("arrived", "/on-time")]
    assert reports == [] and on_time.sent_at is not None


async def test_a_late_report_that_fails_stops_the_request_and_frees_the_connection(provider, monkeypatch):
    base_url, events = provider

    async def broker_away(permit: Permit, anchor: float) -> None:
        raise ConnectionError("broker away")

    monkeypatch.setattr(client.budgets, "report_late", broker_away)
    wire.install()
    async with httpx.AsyncClient(base_url=base_url, transport=AiohttpTransport(limits=httpx.Limits(max_connections=1))) as http:
        current_permit.set(Permit("g-late", use_by=time.time() - 1.0, needs={"wix_requests:s": 1}, waited=0.0,
                                  last_use=time.time() + 10.0))
        with pytest.raises(Exception):
            await http.get("/never")
        current_permit.set(None)
        await http.get("/after")  # the one connection went back to the pool
    assert events == [("arrived", "/after")]


class Clock:
    """wire.py's clock: the broker's ack of a late report comes `ack_after` seconds after it was sent."""

    def __init__(self, ack_after: float) -> None:
        self.now, self.ack_after = time.time(), ack_after

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ack_after", [0.01, 40.0])
async def test_a_late_permit_leaves_only_until_its_last_use(kind, ack_after, provider, monkeypatch):
    """Granted at g, used late: its report must reach the coordinator before the grant leaves the window
    (g + W + grace), which is what last_use (g + W/2) leaves time for. A report whose ack waited out a broker
    outage past last_use, and the request sent then, met room the coordinator had handed out again."""
    base_url, events = provider
    clock = Clock(ack_after)

    async def report_late(permit: Permit, anchor: float) -> None:
        events.append(("reported", permit.grant_id))
        clock.now += clock.ack_after

    monkeypatch.setattr(client.budgets, "report_late", report_late)
    monkeypatch.setattr(wire, "time", clock)
    wire.install()
    granted = clock.now - 1.0
    late = Permit("g-late", use_by=granted + 0.5, needs={"openai_requests": 1}, waited=0.0, granted_at=granted,
                  last_use=granted + 15.0)
    async with _client(kind, base_url) as http:
        current_permit.set(late)
        if ack_after < 1.0:
            await http.get("/late")
            assert events == [("reported", "g-late"), ("arrived", "/late")]
        else:
            with pytest.raises(Exception):
                await http.get("/late")
            assert events == [("reported", "g-late")]  # never sent
            clock.now = granted + 20.0
            with pytest.raises(Exception):  # nor with the same permit later: it is checked again
                await http.get("/again")
            assert events == [("reported", "g-late")]
