"""Every client against answers broken on the wire, not in their JSON: cut off mid-body or mid-head,
no answer at all, bytes that are not HTTP, broken chunking, a header too long, and a well-framed
answer whose rate-limit headers say what no provider would.

What each call gives is a result of its kind or a ProviderError; a cut-off or missing answer is
one a later call may not meet (retryable: the call may have had its effect, and the stage's
lookup before a retry finds it). And the client is still usable afterwards: the next good answer
is read as one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.errors import ProviderError, ProviderUnavailable
from connectors.openai_batches import BatchClient
from connectors.openai_writer import ArticleWriter
from connectors.replicate_images import ImageMaker
from connectors.wix_blog import WixBlog

from .conftest import (
    ODD_FIGURES,
    OPENAI_KEY,
    RATE_LIMIT_HEADERS,
    HANG_UP,
    REPLICATE_TOKEN,
    ThenHangUp,
    answering_raw,
    http_answer,
    keeping_alive,
)
from .test_openai_batches import _BATCH
from .test_openai_writer import COMPLETION, REQUEST
from .test_replicate_images import _PREDICTION
from .test_wix_blog import _CALLS


def _openai(url: str) -> Any:
    return ArticleWriter(base_url=url, api_key=OPENAI_KEY, model="gpt-4o-mini", max_tokens=1200, timeout=5,
                         max_connections=2)


def _replicate(url: str) -> Any:
    return ImageMaker(base_url=url, api_token=REPLICATE_TOKEN, model="black-forest-labs/flux-schnell",
                      timeout=5.0, max_connections=2)


def _wix(url: str) -> Any:
    return WixBlog(base_url=url, timeout=5.0, max_connections=2)


# Each client: how it is made, one call, and the answer that call gets when all is well.
_CLIENTS = {
    "openai": (_openai, lambda c: c.write_article(REQUEST, site_id="site-1"), 200, COMPLETION),
    "openai_batches": (lambda url: BatchClient(base_url=url, api_key="k", timeout=5.0),
                       lambda c: c.retrieve("batch_1"), 200, _BATCH),
    "replicate": (_replicate, lambda c: c.get_prediction("p1"), 200, _PREDICTION),
    "wix": (_wix, _CALLS["publish_draft"][0], 200, _CALLS["publish_draft"][1]),
    "wix_lookup": (_wix, _CALLS["find_post_by_slug"][0], 200, _CALLS["find_post_by_slug"][1]),
}

_SENDABLE_FIGURES = [value for value in ODD_FIGURES if value.isascii()]  # what an HTTP head carries


@st.composite
def _fault(draw: st.DrawFn, status: int, good: Any) -> tuple[str, bytes]:
    """(kind, the bytes the server writes) for one broken answer to a call whose good answer is `good`."""
    body = json.dumps(good).encode()
    whole = http_answer(status, body)
    kind = draw(st.sampled_from(["cut_body", "cut_head", "nothing", "not_http", "bad_chunks", "long_header",
                                 "bad_encoding", "deep_json", "odd_figures"]))
    if kind == "cut_body":
        return kind, http_answer(status, body[:draw(st.integers(0, len(body) - 1))], length=len(body))
    if kind == "cut_head":
        return kind, whole[:draw(st.integers(1, whole.index(b"\r\n\r\n") + 1))]
    if kind == "nothing":
        return kind, b""
    if kind == "not_http":
        return kind, draw(st.binary(min_size=1, max_size=40))
    if kind == "bad_chunks":
        size = draw(st.sampled_from([b"ZZ", b"-1", b"ffffffffffffffffffff", b"5"]))
        return kind, (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + size + b"\r\n" + body[:3])
    if kind == "bad_encoding":  # says gzip (or deflate), is not
        encoding = draw(st.sampled_from(["gzip", "deflate", "br"]))
        return kind, http_answer(status, body, {"Content-Encoding": encoding})
    if kind == "deep_json":  # JSON nested past what the parser takes
        depth = draw(st.sampled_from([100_000, 200_000]))
        return kind, http_answer(draw(st.sampled_from([status, 429, 500])), b"[" * depth + b"]" * depth)
    if kind == "long_header":
        return kind, http_answer(status, body, {"x-padding": "a" * draw(st.sampled_from([70_000, 300_000]))})
    statuses = st.sampled_from([status, status, 429, 500, 503])
    figures = draw(st.dictionaries(st.sampled_from(RATE_LIMIT_HEADERS), st.sampled_from(_SENDABLE_FIGURES), min_size=1))
    return kind, http_answer(draw(statuses), body, figures)


_LOST = {"cut_body", "cut_head", "nothing"}  # the call may have had its effect: say "try again", never "never"


@settings(max_examples=100, deadline=None)
@given(data=st.data(), client=st.sampled_from(sorted(_CLIENTS)))
def test_an_answer_broken_on_the_wire_is_a_provider_error_and_the_client_stays_usable(data, client: str) -> None:
    make, call, status, good = _CLIENTS[client]
    faults = data.draw(st.lists(_fault(status, good), min_size=1, max_size=5))

    async def run() -> tuple[list[Any], Any]:
        queue = [raw for _, raw in faults] + [http_answer(status, json.dumps(good).encode())]
        server, url = await answering_raw(queue)
        connector = make(url)
        outcomes: list[Any] = []
        try:
            for _ in faults:
                try:
                    outcomes.append(await call(connector))
                except ProviderError as exc:
                    outcomes.append(exc)
            after = await call(connector)
        finally:
            await connector.aclose()
            server.close()
            await server.wait_closed()
        return outcomes, after

    outcomes, after = asyncio.run(run())
    for (kind, _), outcome in zip(faults, outcomes):
        if kind in _LOST:
            assert isinstance(outcome, ProviderUnavailable) and outcome.retryable, (kind, outcome)
        elif isinstance(outcome, ProviderError):
            assert outcome.message, (kind, outcome)
        figures = getattr(outcome, "rate_limit", None)
        if figures is not None:  # on an error or an article alike: only figures a provider could give
            for limit, left in ((figures.limit_requests, figures.remaining_requests),
                                (figures.limit_tokens, figures.remaining_tokens)):
                assert left is None or 0 <= left <= (limit if limit is not None else left), (kind, figures)
    assert not isinstance(after, ProviderError)


@pytest.mark.parametrize("client", ["replicate", "wix_lookup"])
async def test_a_get_the_server_hangs_up_on_is_sent_once_not_again_behind_the_callers_back(client: str) -> None:
    """aiohttp sends an idempotent request again after a disconnect; a poll or a slug lookup sent twice is a
    provider call without a permit. One try is one request: the caller's retry takes a new permit."""
    make, call, status, good = _CLIENTS[client]
    queue = [b"", http_answer(status, json.dumps(good).encode())]
    server, url = await answering_raw(queue)
    connector = make(url)
    try:
        with pytest.raises(ProviderUnavailable):
            await call(connector)
        assert len(queue) == 1  # the good answer is still there: the server was asked once
        assert not isinstance(await call(connector), ProviderError)
    finally:
        await connector.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("client", sorted(_CLIENTS))
@pytest.mark.parametrize("lost", ["hung_up_after_reading", "closed_after_answering"])
async def test_a_kept_alive_connection_the_server_drops_never_carries_a_call_twice(client: str, lost: str) -> None:
    """The second call goes on a connection kept from the first, and the server drops it: after reading the
    request and before answering (the call may have had its effect: retryable, and not sent again by any layer
    under the client), or right after the first answer (a stale connection: the call goes on a new one, or fails retryable unsent).
    Either way the server reads each call at most once, and the client's next call is answered."""
    make, call, status, good = _CLIENTS[client]
    kept = http_answer(status, json.dumps(good).encode(), keep_alive=True)
    if lost == "hung_up_after_reading":
        queue = [kept, HANG_UP, kept]
    else:
        queue = [ThenHangUp(kept), kept, kept]
    server, url, seen = await keeping_alive(queue)
    connector = make(url)
    try:
        assert not isinstance(await call(connector), ProviderError)
        try:
            second = await call(connector)
        except ProviderError as exc:
            second = exc
        if lost == "hung_up_after_reading" or isinstance(second, ProviderError):
            assert isinstance(second, ProviderUnavailable) and second.retryable, second
        # Read once, or (sent into a connection already closed) not at all; never twice.
        assert len(seen) == (2 if lost == "hung_up_after_reading" or not isinstance(second, ProviderError) else 1), seen
        before = len(seen)
        assert not isinstance(await call(connector), ProviderError)
        assert len(seen) == before + 1, seen
    finally:
        await connector.aclose()
        server.close()
        await server.wait_closed()
