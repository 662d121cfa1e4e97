"""httpx responses that reference counting frees: no garbage-collector pause per provider call.

httpx wraps every response's stream in a `BoundAsyncStream` that points back at the
response (`httpx._client`, `_send_single_request`), a reference cycle. Every Replicate
call (and every Wix call, while that client was httpx too) therefore left about 40 objects (the response, its
request, headers, aiohttp's response...) that only the cyclic garbage collector frees.
(httpx2, under the openai SDK, has no such cycle, and its `elapsed` reads the stream:
it is left alone.) In the 3-minute tier benchmark each worker's young-
generation collections found 15,000-80,000 such objects and held its event loop
40-200 ms (145 ms at p99, `blogstream_gc_pause_seconds`), and the permits that
waited meanwhile made the permit p99.

Once a response sent without `stream=True` is read and closed, its stream is
never used again (the body is kept in the response), so `install()` swaps it for
an empty one there: the cycle is broken and the whole group is freed the moment
the caller drops the response. Streamed responses are left alone. Written by
hand: httpx has no option for it.
"""
from __future__ import annotations

import functools
from typing import Any

__all__ = ["install"]

_INSTALLED = "_blogstream_breaks_response_cycle"


def _breaking(send: Any, empty_stream: Any) -> Any:
    @functools.wraps(send)
    async def send_and_break_cycle(self: Any, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
        response = await send(self, request, stream=stream, **kwargs)
        if not stream and response.is_closed:
            response.stream = empty_stream(b"")
        return response

    setattr(send_and_break_cycle, _INSTALLED, True)
    return send_and_break_cycle


def install() -> None:
    """Break the cycle in httpx's AsyncClient (called by streams/worker.py; hooked once however often called)."""
    import httpx

    if not getattr(httpx.AsyncClient.send, _INSTALLED, False):
        httpx.AsyncClient.send = _breaking(httpx.AsyncClient.send, httpx.ByteStream)
