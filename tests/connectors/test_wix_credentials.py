"""A site whose Wix key or id no HTTP header can carry is a refused credential, said at once.

`blogstream sites add` now refuses such a key, but a row written before, or by SQL, may hold one
(a key read from a file saved with CRLF). aiohttp raised ValueError ("Forbidden control
character detected in headers") on every call of the site: not a ProviderError, so each post
failed after four tries as "a fault in blogstream" and never said to fix the key.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.errors import RejectedRequest
from connectors.wix_blog import SiteCredentials, WixBlog

from .conftest import WIX_KEY

FORBIDDEN = st.sampled_from([chr(c) for c in (*range(0, 9), *range(10, 32), 127)])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the simulator's address only
@given(bad=FORBIDDEN, where=st.integers(0, 2), field=st.sampled_from(["key", "site"]))
def test_credentials_a_header_cannot_carry_are_refused_naming_them(connector_args, bad: str, where: int,
                                                                  field: str) -> None:
    import asyncio

    key, site_id = WIX_KEY, "site-a"
    if field == "key":
        key = [bad + key, key + bad, key[:4] + bad + key[4:]][where]
    else:
        site_id = [bad + site_id, site_id + bad, site_id[:2] + bad + site_id[2:]][where]

    async def call() -> None:
        async with WixBlog(**connector_args["wix"]) as wix:
            await wix.find_post_by_slug(SiteCredentials(site_id, key), "a-post")

    with pytest.raises(RejectedRequest) as info:
        asyncio.run(call())
    exc = info.value
    assert not exc.retryable and exc.credentials_refused
    assert ("wix_api_key" if field == "key" else "site id") in exc.message and "sites add" in exc.message
    assert WIX_KEY not in str(exc) and WIX_KEY not in repr(exc)
