"""connectors/response_cycles.py: a provider's answer is freed by reference counting, not by a collector pause."""
from __future__ import annotations

import gc
from connectors import response_cycles


def cyclic_garbage_per_request(module, n: int = 50) -> float:
    async def run() -> float:
        transport = module.MockTransport(lambda request: module.Response(200, json={"ok": True}))
        async with module.AsyncClient(transport=transport, base_url="http://provider") as client:
            await client.get("/warm-up")
            gc.collect()
            gc.disable()
            try:
                for _ in range(n):
                    response = await client.get("/v1/things")
                    assert response.json() == {"ok": True}
                del response
                return gc.collect() / n
            finally:
                gc.enable()

    import asyncio

    return asyncio.run(run())


def test_a_read_answer_leaves_no_cyclic_garbage_once_installed(monkeypatch):
    import httpx

    send = httpx.AsyncClient.send
    with monkeypatch.context() as plain:  # as httpx comes (another test may have installed it already)
        plain.setattr(httpx.AsyncClient, "send", getattr(send, "__wrapped__", send))
        assert cyclic_garbage_per_request(httpx) > 5  # httpx's response <-> stream cycle, and all it holds
    response_cycles.install()
    response_cycles.install()  # once is enough: a second call hooks nothing twice
    assert getattr(httpx.AsyncClient.send.__wrapped__, "__wrapped__", None) is None
    assert cyclic_garbage_per_request(httpx) == 0


def test_httpx2_under_the_openai_sdk_has_no_such_cycle_and_is_left_alone():
    import httpx2

    response_cycles.install()
    assert not hasattr(httpx2.AsyncClient.send, "__wrapped__")
    assert cyclic_garbage_per_request(httpx2) == 0


def test_a_streamed_answer_keeps_its_stream():
    import asyncio

    import httpx

    response_cycles.install()

    async def run() -> bytes:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"chunk" * 3))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.send(client.build_request("GET", "http://provider/s"), stream=True)
            body = b"".join([part async for part in response.aiter_bytes()])
            await response.aclose()
            return body

    assert asyncio.run(run()) == b"chunkchunkchunk"
