"""Fixtures: the provider simulators (`python -m simulators`) on a free port.

One simulator process per test session; every test starts from a reset ledger
and a known configuration (fast latencies, generous limits) and tightens only
what it exercises. Connectors are built per test because their HTTP clients
belong to the test's event loop.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import strategies as st

from connectors.openai_writer import ArticleWriter
from connectors.replicate_images import ImageMaker
from connectors.wix_blog import WixBlog

ROOT = Path(__file__).resolve().parents[2]

# Distinctive fake credentials: tests assert they never show up in an error message.
OPENAI_KEY = "sk-test-CONNECTORS-s3cr3t-0penai-key"
REPLICATE_TOKEN = "r8_TESTconnectorsS3cr3tReplicateToken"
WIX_KEY = "IST.test-connectors.s3cr3t-wix-api-key"

# Applied before every test (POST /_sim/config merges, so every key a test may
# change is listed here to undo it).
BASELINE: dict[str, Any] = {
    "window_seconds": 60.0,
    "latency_scale": 0.01,
    "openai": {"rpm": 450, "tpm": 450_000, "error_rate": 0.0, "slow_rate": 0.0, "latency": [1.0, 2.0], "cut_rate": 0.0,
               "stored_lag_seconds": 0.0},
    "replicate": {
        "create_rpm": 600,
        "other_rpm": 3000,
        "error_rate": 0.0,
        "fail_rate": 0.0,
        "slow_rate": 0.0,
        "latency": [1.0, 2.0],
        "output_ttl_seconds": 3600.0,
    },
    "wix": {"site_rpm": 200, "error_rate": 0.0, "slow_rate": 0.0, "bulk_item_error_rate": 0.0, "lost_answer_rate": 0.0, "query_lag_seconds": 0.0,
            "latency_file_ready": [0.5, 2.0]},
}


# Any JSON value, small: what a provider's answer may carry where a field should be.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


# The headers a provider states its rate limits in, and values for them a broken proxy or provider
# has been known to send, beside ones it does.
RATE_LIMIT_HEADERS = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
                      "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
                      "retry-after", "retry-after-ms"]
ODD_FIGURES = ["-1", "-1e30", "1e30", "1" + "0" * 40, "1" + "0" * 400, "9" * 30 + "h", "9" * 400 + "h", "nan", "inf",
               "-inf", "Infinity", "1.5", "", " ", "0x10", "1_000", "１２", "٣", "Mon, 01 Jan 0001 00:00:00 -0000",
               "Fri, 31 Dec 9999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00", "999999999999999999999ms", "1e308",
               "0", "450", "1000"]


def paths_in(node: Any, here: tuple = ()) -> list[tuple]:
    """Every node's path in a JSON value: () for the whole, then keys and indexes down to the leaves."""
    found = [here]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths_in(value, here + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths_in(value, here + (index,))
    return found


def broken_at(template: Any, path: tuple, value: Any) -> Any:
    """A copy of a good answer with the node at `path` replaced by `value` (the whole, for the empty path)."""
    if not path:
        return value
    body = json.loads(json.dumps(template))
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


async def serving(app: Any) -> tuple[Any, str]:
    """Serve an aiohttp `web.Application` on a free port of 127.0.0.1: its runner (clean it up) and URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def answering_in_turn(queue: list[tuple[int, bytes]]) -> tuple[Any, str]:
    """A server whose every request, any method and path, gets the next (status, JSON body) of
    `queue` (a 404 once it is empty): its runner (clean it up) and URL."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        status, body = queue.pop(0) if queue else (404, b"{}")
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return await serving(app)


def outcomes_in_turn(make_client: Any, steps: list[tuple[Any, list[tuple[int, bytes]]]]) -> list[Any]:
    """Run each step (call, answers) on a client made by `make_client(url)` against a server that gives the
    call `answers` in turn: what each call returned, or the ProviderError it raised."""
    import asyncio

    from connectors.errors import ProviderError

    async def run() -> list[Any]:
        queue: list[tuple[int, bytes]] = []
        runner, url = await answering_in_turn(queue)
        outcomes: list[Any] = []
        try:
            async with make_client(url) as client:
                for call, answers in steps:
                    queue[:] = list(answers)
                    try:
                        outcomes.append(await call(client))
                    except ProviderError as exc:
                        outcomes.append(exc)
        finally:
            await runner.cleanup()
        return outcomes

    return asyncio.run(run())


async def answering_raw(queue: list[bytes]) -> tuple[Any, str]:
    """A TCP server that reads each request (head and Content-Length body) and writes the next bytes of `queue`
    as they are, framing and all, then closes the connection: its server (close it) and URL. An empty queue
    closes without a word."""
    server, url, _ = await keeping_alive(queue, one_per_connection=True)
    return server, url


def http_answer(
    status: int, body: bytes, headers: dict[str, str] | None = None, *, length: int | None = None, keep_alive: bool = False
) -> bytes:
    """An HTTP/1.1 answer's bytes; `length` declares a Content-Length other than the body's own; `keep_alive`
    leaves out `Connection: close`, so the client may send its next request on the same connection."""
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json"] + ([] if keep_alive else ["Connection: close"])
    lines += [f"Content-Length: {len(body) if length is None else length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Simulator:
    """Handle on the simulator process: base URL plus the /_sim control API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=10.0)

    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        response = self._http.post("/_sim/config", json=patch)
        assert response.status_code == 200, response.text
        return response.json()

    def reset(self) -> None:
        self._http.post("/_sim/reset").raise_for_status()

    def ledger(self) -> dict[str, Any]:
        response = self._http.get("/_sim/ledger")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="session")
def simulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    if not (ROOT / "simulators" / "__main__.py").exists():
        pytest.skip("simulators/ package not present")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("simulator") / "simulator.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in list(env):  # the test process's SIM_* tuning must not leak into this private instance
        if name.startswith("SIM_"):
            del env[name]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", "--port", str(port), "--log-level", "WARNING"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            sim = Simulator(_wait_healthy(proc, f"http://127.0.0.1:{port}", log_path))
            yield sim
            sim.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> str:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{base_url}/_sim/health", timeout=1.0).status_code == 200:
                return base_url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulator not healthy after 30 s; see {log_path}")
        time.sleep(0.1)


@pytest.fixture
def sim(simulator_process: Simulator) -> Simulator:
    simulator_process.configure(BASELINE)
    simulator_process.reset()
    return simulator_process


@pytest.fixture
def connector_args(sim: Simulator) -> dict[str, dict[str, Any]]:
    """Constructor arguments of each connector, pointed at the simulator (models, token cap and
    connection limits as the pipeline's defaults); a test overrides what it exercises."""
    return {
        "openai": {"base_url": f"{sim.base_url}/openai/v1", "api_key": OPENAI_KEY, "model": "gpt-4o-mini",
                   "max_tokens": 1200, "timeout": 10.0, "max_connections": 200},
        "replicate": {"base_url": f"{sim.base_url}/replicate", "api_token": REPLICATE_TOKEN,
                      "model": "black-forest-labs/flux-schnell", "timeout": 10.0, "max_connections": 200},
        "wix": {"base_url": f"{sim.base_url}/wix", "timeout": 10.0, "max_connections": 200},
    }


@pytest.fixture
def openai_args(connector_args: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return connector_args["openai"]


@pytest.fixture
def replicate_args(connector_args: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return connector_args["replicate"]


@pytest_asyncio.fixture
async def writer(openai_args: dict[str, Any]) -> AsyncIterator[ArticleWriter]:
    async with ArticleWriter(**openai_args) as client:
        yield client


@pytest_asyncio.fixture
async def images(replicate_args: dict[str, Any]) -> AsyncIterator[ImageMaker]:
    async with ImageMaker(**replicate_args) as client:
        yield client


@pytest_asyncio.fixture
async def wix(connector_args: dict[str, dict[str, Any]]) -> AsyncIterator[WixBlog]:
    async with WixBlog(**connector_args["wix"]) as client:
        yield client


HANG_UP = b""  # in `keeping_alive`'s queue: read the request, then close without a word


class ThenHangUp(bytes):
    """In `keeping_alive`'s queue: an answer after which the server closes the connection, though the answer
    said nothing of it (a kept-alive connection the server drops while the client holds it for its next call)."""


async def keeping_alive(queue: list[bytes], *, one_per_connection: bool = False) -> tuple[Any, str, list[bytes]]:
    """A TCP server that keeps each connection open and answers every request on it with the next bytes of
    `queue` (HANG_UP: read it, then close the connection unanswered; ThenHangUp: answer, then close; with
    `one_per_connection` every answer is a ThenHangUp): its server, URL, and the request lines it has read,
    in order, so a test sees what a client sent again behind its caller's back."""
    import asyncio

    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                seen.append(head.split(b"\r\n", 1)[0])
                reply = queue.pop(0) if queue else HANG_UP
                if reply == HANG_UP:
                    return
                writer.write(reply)
                await writer.drain()
                if one_per_connection or isinstance(reply, ThenHangUp):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
