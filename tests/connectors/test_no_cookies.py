"""Provider clients read no Set-Cookie and send no Cookie: Replicate's through connectors/no_cookies.py, Wix's (aiohttp) with a DummyCookieJar."""
from __future__ import annotations

import httpx
import pytest
from aiohttp import web

from connectors import no_cookies
from connectors.no_cookies import NoCookies, keep_no_cookies
from connectors.replicate_images import ImageMaker
from connectors.wix_blog import SiteCredentials, WixBlog

from .conftest import serving

SITE = SiteCredentials(site_id="site-a", wix_api_key="IST.key", wix_member_id="member-1")
SETS_COOKIES = [("set-cookie", "__cf_bm=abc; Path=/; HttpOnly"), ("set-cookie", "session=xyz; Path=/")]


class Recorder:
    """A provider stand-in that sets cookies on every answer and records what each request carried."""

    def __init__(self) -> None:
        self.cookie_headers: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.cookie_headers.append(request.headers.get("cookie"))
        return httpx.Response(404, headers=SETS_COOKIES, json={"message": "not found"})


@pytest.mark.asyncio
async def test_wix_client_neither_keeps_nor_sends_cookies() -> None:
    # Wix's client is aiohttp (no httpx): a real server on 127.0.0.1 sets cookies on every answer.
    seen: list[str | None] = []

    async def not_found(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        response = web.json_response({"message": "not found"}, status=404)
        for name, value in (("__cf_bm", "abc"), ("session", "xyz")):
            response.set_cookie(name, value, path="/", httponly=True)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_found)
    runner, url = await serving(app)
    wix = WixBlog(base_url=url, timeout=5.0, max_connections=2)
    try:
        assert await wix.find_post_by_slug(SITE, "first") is None
        assert await wix.find_post_by_slug(SITE, "second") is None
        assert len(wix._http().cookie_jar) == 0
        assert seen == [None, None]
    finally:
        await wix.aclose()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_replicate_sdk_client_keeps_no_cookies() -> None:
    images = ImageMaker(base_url="http://replicate.test", api_token="r8_token", model="owner/model", timeout=5.0,
                        max_connections=2)
    try:
        assert isinstance(images._client._async_client.cookies, NoCookies)
    finally:
        await images.aclose()


@pytest.mark.asyncio
async def test_a_plain_client_given_the_store_never_reads_set_cookie() -> None:
    # What keep_no_cookies relies on: httpx reads answers into the store the client keeps as `_cookies`.
    provider = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider), base_url="http://x.test") as plain:
        await plain.get("/a")
        assert len(plain.cookies) == 2  # httpx's own store keeps them
    async with keep_no_cookies(httpx.AsyncClient(transport=httpx.MockTransport(provider),
                                                 base_url="http://x.test")) as client:
        await client.get("/a")
        await client.get("/b")
        assert len(client.cookies) == 0
    assert provider.cookie_headers == [None, None, None]


def test_the_store_takes_no_cookie_set_by_hand_either() -> None:
    store = NoCookies()
    store.set("session", "xyz", domain="example.com")
    assert len(store) == 0 and not store
    assert no_cookies.__all__ == ["NoCookies", "keep_no_cookies"]
