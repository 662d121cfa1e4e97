"""Provider clients that keep no cookies: no Set-Cookie parsing on every answer.

httpx reads every response into its cookie jar (`AsyncClient._send_single_request`
calls `Cookies.extract_cookies`): it builds a `urllib.request.Request` and an
`email.message.Message` for the stdlib's `CookieJar`, about 40-70 us of CPU per
call whether or not the answer sets a cookie. Replicate authenticates each
request with its token and needs no cookie, so this was pure cost on every Replicate
call. (The openai SDK's own client, httpx2, reads no cookies; Wix's, plain aiohttp, has a
`DummyCookieJar`.)

`keep_no_cookies(client)` gives a client a cookie store that takes none and sends
none. Written by hand: httpx has no switch for it, and its public `cookies` setter
copies whatever it is given into a new `Cookies`, so the store is set where the
client keeps it (`_cookies`; tests/connectors/test_no_cookies.py checks it still is).
"""
from __future__ import annotations

from typing import Any

import httpx

__all__ = ["NoCookies", "keep_no_cookies"]


class NoCookies(httpx.Cookies):
    """A cookie store that stays empty: answers' Set-Cookie headers are not read."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        return None  # nothing is kept, so nothing can be sent back


def keep_no_cookies(client: Any) -> Any:
    """`client` (an httpx client) keeps and sends no cookies from now on; returns it."""
    client._cookies = NoCookies()
    return client
