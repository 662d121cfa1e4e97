"""aiohttp sessions that send each request once: no second attempt behind the caller's back.

aiohttp (3.10+) sends an idempotent request (GET, PUT, DELETE, ...) a second time
when the server closes the connection before answering (ServerDisconnectedError,
ClientOSError), on a fresh connection as well as a reused one. The provider may
have counted the first: the second would be a call no permit was taken for
(Wix's slug lookups, Replicate's polls). Our own retry loop takes a permit for
every try, so the session must make one.

aiohttp has no public switch for it: ClientSession keeps it as `_retry_connection`
(3.11+, hence the minimum in pyproject.toml), and its own test client turns it off
the same way. tests/connectors/test_wire_faults.py checks that each call is one
request, whatever the server does.
"""

from __future__ import annotations

import functools
import ssl

import aiohttp
import certifi

__all__ = ["one_attempt_session"]

# Idle connections are closed after this long, as httpx's pool did (aiohttp keeps them 15 s): with
# no second attempt, a request sent on a connection the server has just closed costs a retry.
KEEPALIVE_SECONDS = 5.0


@functools.cache
def _certificates() -> ssl.SSLContext:
    """Mozilla's CA bundle (certifi), as httpx verifies servers: not whatever the host has installed."""
    return ssl.create_default_context(cafile=certifi.where())


def one_attempt_session(*, connections: int, timeout: aiohttp.ClientTimeout | None = None,
                        headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A session for a provider client: at most `connections` at once (HTTP/1.1 keep-alive), each request
    sent once, and no cookies kept or sent (each request carries its own credentials)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(1, connections), keepalive_timeout=KEEPALIVE_SECONDS,
                                       ssl=_certificates()),
        timeout=timeout or aiohttp.ClientTimeout(),
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    if not hasattr(session, "_retry_connection"):  # an aiohttp older than pyproject.toml allows
        raise RuntimeError("aiohttp >= 3.11 is needed: older ones send a GET again after a disconnect")
    session._retry_connection = False
    return session
