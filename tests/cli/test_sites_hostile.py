"""`blogstream sites add` with any text: refused naming what is wrong, or a site that works.

A site's id is the site_id every request names (and the wix-site-id header of its Wix calls);
its key is the Authorization header. Before, any text was stored: a site id no request may
carry ("shop 1", "shöp", 129 characters), so every request for it was refused, and a key with
a line break (a key file saved with CRLF, read into the variable) made every Wix call of the
site raise in aiohttp ("Forbidden control character detected in headers"): each post failed
after four tries as "a fault in blogstream", never saying to fix the key. Text Postgres cannot
take (bytes of the command line that are not UTF-8) crashed the command as "unexpected".
"""
from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.wix_blog import WixBlog
from streams.contract import check_request

from .conftest import RUN, on_db

# What a command line or an environment variable can hold: no NUL, and of the surrogates only those
# Python reads bytes that are not UTF-8 as (surrogateescape, \udc80-\udcff).
ANY_TEXT = st.text(st.characters(min_codepoint=1, blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", " ", "\r", "\n", "\r\n", "\t", "\x7f", "\udc80", "ab\udcff", "é", "\u201c", " x ", "a b", "x" * 130, "../x"])
KEYS = st.one_of(
    st.just("IST.eyJraWQiOiJQb3pIX2FDMiJ9.sig-_"),
    st.builds(lambda good, junk, where: [junk + good, good + junk, good[:5] + junk + good[5:]][where],
              st.just("IST.eyJraWQiOiJQb3pIX2FDMiJ9.sig-_"), ANY_TEXT, st.integers(0, 2)),
)


def reaches_wix(site: Any) -> dict[str, str]:
    """The headers a Wix call of `site` carries to a server (a slug lookup answered 404)."""
    seen: dict[str, str] = {}

    async def lookup(request: web.Request) -> web.Response:
        seen.update(request.headers)
        return web.json_response({"message": "not found"}, status=404)

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/blog/v3/posts/slugs/{slug}", lookup)
        runner = web.AppRunner(app)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = tcp._server.sockets[0].getsockname()[1]
        wix = WixBlog(base_url=f"http://127.0.0.1:{port}", timeout=10.0, max_connections=2)
        try:
            assert await wix.find_post_by_slug(site, "a-post") is None
        finally:
            await wix.aclose()
            await runner.cleanup()

    asyncio.run(go())
    return seen


@settings(database=None, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(suffix=st.sampled_from(["", "-ok"]) | ANY_TEXT, key=KEYS,
       member=st.none() | ANY_TEXT, name=st.none() | ANY_TEXT)
def test_a_site_is_refused_naming_what_is_wrong_or_it_works(run: Any, suffix: str, key: str, member: str | None,
                                                            name: str | None) -> None:
    site = f"{RUN}-{uuid.uuid4().hex[:8]}{suffix}"  # a site of its own per example
    args = ["sites", "add", site, "--wix-api-key-env", "HOSTILE_KEY"]
    args += [] if member is None else ["--member-id", member]
    args += [] if name is None else ["--name", name]
    result = run(*args, env={"HOSTILE_KEY": key})
    stored = on_db(lambda db: db.get_site(site)) if result.exit_code == 0 else None
    if result.exit_code != 0:
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.startswith("blogstream: error: ") and result.stderr.count("\n") == 1
        assert any(word in result.stderr for word in ("site id", "Wix API key", "--member-id", "--name"))
        if not re.search("[\udc80-\udcff]", site):  # (Postgres cannot even be asked for such an id)
            assert on_db(lambda db: db.get_site(site)) is None
        return
    assert stored is not None and stored.site_id == site
    _, problems = check_request({"site_id": site, "topic": "t", "request_id": "r", "requested_at": 1_750_000_000_000})
    assert problems == [], problems  # requests can name it
    headers = reaches_wix(stored)
    assert headers["Authorization"] == stored.wix_api_key == key.strip() and headers["wix-site-id"] == site
