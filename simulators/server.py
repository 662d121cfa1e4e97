"""Run the simulators in a background thread (for tests and benchmarks in other processes' code).

    with SimulatorServer(config_patch={"latency_scale": 0.01}) as sim:
        sim.openai_base_url      # http://127.0.0.1:<port>/openai/v1
        sim.configure({"openai": {"rpm": 5}})
        sim.ledger()
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from typing import Any, Optional

from aiohttp import web

from .app import create_app
from .config import DEFAULTS, config_from_env, merge_config
from .state import SimState


class SimulatorServer:
    def __init__(self, port: int = 0, config: Optional[dict] = None, config_patch: Optional[dict] = None,
                 use_env: bool = False):
        base = config_from_env() if use_env else DEFAULTS
        cfg = merge_config(base, config or {})
        if config_patch:
            cfg = merge_config(cfg, config_patch)
        self.state = SimState(cfg)
        self._requested_port = port
        self.port: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "SimulatorServer":
        self._thread = threading.Thread(target=self._run, name="simulators", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        if self.port is None:
            raise RuntimeError("simulator did not start within 10 s")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
        loop.close()

    async def _startup(self) -> None:
        self._runner = web.AppRunner(create_app(state=self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._requested_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> "SimulatorServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- URLs ------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/openai/v1"

    @property
    def replicate_base_url(self) -> str:
        return self.base_url + "/replicate"

    @property
    def wix_base_url(self) -> str:
        return self.base_url + "/wix"

    # -- control (over HTTP, so it is exactly what an external process sees) ----------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def configure(self, patch: dict) -> dict:
        return self._call("POST", "/_sim/config", patch)

    def reset(self) -> None:
        self._call("POST", "/_sim/reset", {})

    def ledger(self) -> dict:
        return self._call("GET", "/_sim/ledger")

    def events(self, provider: str, since: float = 0.0, window: Optional[str] = None) -> list:
        q = f"?provider={provider}&since={since}" + (f"&window={window}" if window else "")
        return self._call("GET", "/_sim/events" + q)
