"""aiohttp application: provider simulators + control/ledger endpoints under /_sim."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Optional

from aiohttp import web

from .common import json_response, read_json, roll
from .config import ConfigError
from .state import SimState

log = logging.getLogger("simulators")

STATE_KEY = web.AppKey("sim_state", SimState)
OWN_PROCESS_KEY = web.AppKey("own_process", bool)  # python -m simulators: the process is the server's alone


async def _external_load(state: SimState, provider: str) -> None:
    """Another client sharing the key: ``external_rpm`` admissions per minute, evenly spaced."""
    next_at: Optional[float] = None
    while True:
        rpm = float(state.config[provider].get("external_rpm", 0) or 0)
        if rpm <= 0:
            next_at = None
            await asyncio.sleep(0.05)
            continue
        interval = 60.0 / rpm
        loop_now = time.monotonic()
        if next_at is None or next_at < loop_now - 1.0:   # (re)start or fell far behind
            next_at = loop_now
        delay = next_at - loop_now
        await asyncio.sleep(max(0.0, min(delay, 0.05)))
        if time.monotonic() + 1e-4 < next_at:
            continue   # re-read config at least every 50 ms
        try:
            state.providers[provider].external_tick()
        except Exception:  # pragma: no cover - never kill the background task
            log.exception("external load tick failed for %s", provider)
        next_at += interval


async def _sample_loop_lag(state: SimState, every: float = 0.05) -> None:
    while True:
        asked = time.monotonic()
        await asyncio.sleep(every)
        state.loop_lag.append(time.monotonic() - asked - every)


# How often _freeze_what_stays runs. Its pass walks what survived since the last one: the shorter the
# period, the shorter each stall (measured in docs/bench-tier.md, session 17).
FREEZE_EVERY_SECONDS = 2.0


async def _freeze_what_stays(every: float = FREEZE_EVERY_SECONDS) -> None:
    """Keep the collector off the calls already answered, so the server never stalls for seconds.

    The simulators keep every call they served (ledger events, predictions, posts with their rich
    content): millions of objects that stay until a reset. A full collection walks all of them: in
    the tier benchmark (75,000 blogs) the event loop stalled for up to 1.7 s, and calls whose bytes
    arrived then were counted that late, which a provider does not do. Each pass collects the young
    generations, then freezes the rest (cycles already unreachable and old are kept; a few MB).

    A pass walks what was made since the one before and is still alive, so its period bounds its
    length: every 20 s, the longest collection held the loop 409 ms in a 3-minute tier run, and the
    OpenAI simulator counted calls that late (session 16's 429s). See FREEZE_EVERY_SECONDS.
    """
    gc.set_threshold(20_000, 50, 100)
    while True:
        await asyncio.sleep(every)
        gc.collect(1)
        gc.freeze()


class CollectorClock:
    """The server's garbage collections (a gc callback): how long they held its loop, and how much of
    that was the collector's CPU rather than the process waiting for a core. The loop's lateness alone
    cannot tell the two apart, and only the first is the simulator's own doing."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._started = self._cpu_started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started, self._cpu_started = time.perf_counter(), time.thread_time()
            return
        wall = time.perf_counter() - self._started
        seen = self.state.collector
        seen["pauses"] += 1
        seen["seconds"] += wall
        seen["cpu_seconds"] += time.thread_time() - self._cpu_started
        seen["longest"] = max(seen["longest"], wall)
        by_generation = f"longest_gen{info.get('generation', 0)}"
        seen[by_generation] = max(seen.get(by_generation, 0.0), wall)


async def _background(app: web.Application):
    state = app[STATE_KEY]
    tasks = [asyncio.create_task(_external_load(state, p)) for p in state.providers]
    tasks.append(asyncio.create_task(_sample_loop_lag(state)))
    clock = None
    if app.get(OWN_PROCESS_KEY):  # the collector is the process's: not in a test's thread
        tasks.append(asyncio.create_task(_freeze_what_stays()))
        clock = CollectorClock(state)
        gc.callbacks.append(clock)
    yield
    if clock is not None:
        gc.callbacks.remove(clock)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


# -- control endpoints -------------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].config)


async def post_config(request: web.Request) -> web.Response:
    body, err = await read_json(request)
    if err or not isinstance(body, dict):
        return json_response({"error": err or "config patch must be a JSON object"}, 400)
    try:
        cfg = request.app[STATE_KEY].update_config(body)
    except ConfigError as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response(cfg)


async def reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return json_response({"ok": True})


async def ledger(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].ledger())


async def events(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    provider = request.query.get("provider", "openai")
    if provider not in state.providers:
        return json_response({"error": f"unknown provider {provider!r}"}, 400)
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return json_response({"error": "since must be a unix timestamp"}, 400)
    return json_response(state.providers[provider].events(since, request.query.get("window")))


PROVIDER_PATHS = {"/openai/": "openai", "/replicate/v1/": "replicate", "/wix/": "wix"}


def _provider_of(path: str) -> Optional[str]:
    """The provider a request path is for ("openai", "replicate", "wix"), None for the simulator's own."""
    return next((name for prefix, name in PROVIDER_PATHS.items() if path.startswith(prefix)), None)


@web.middleware
async def _timeouts(request: web.Request, handler):
    """A share (`timeout_rate`) of a provider's calls gets no answer for `timeout_seconds`, then a 504.

    Such a call never reaches the provider: nothing is admitted, nothing done,
    as when a request is lost on the way. A client whose timeout is shorter
    than `timeout_seconds` (not scaled by latency_scale) sees a timeout.
    """
    provider = _provider_of(request.path)
    if provider is not None:
        state = request.app[STATE_KEY]
        cfg = state.config[provider]
        if roll(state.rng, cfg.get("timeout_rate", 0)):
            state.timeouts[provider] += 1
            await asyncio.sleep(float(cfg.get("timeout_seconds", 30.0)))
            return json_response({"error": "gateway timeout (simulated): no answer in time"}, 504)
    return await handler(request)


@web.middleware
async def _cut_answers(request: web.Request, handler):
    """A share (`cut_rate`) of a provider's calls is done in full, then its answer is cut off on the way back.

    The call is admitted, counted, billed and its effect made (a post exists); the caller gets the head,
    with the whole body's Content-Length, and half the body, then the connection closes: as when a
    connection resets mid-answer. The caller cannot tell whether the call was done.
    """
    response = await handler(request)
    provider = _provider_of(request.path)
    if provider is None or not isinstance(response, web.Response) or not isinstance(response.body, bytes) \
            or not 200 <= response.status < 300:  # only a call done in full: not a refusal, not a fault
        return response
    state = request.app[STATE_KEY]
    if not roll(state.rng, state.config[provider].get("cut_rate", 0)):
        return response
    state.cuts[provider] += 1
    body = response.body
    cut = web.StreamResponse(status=response.status, headers=response.headers)
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return cut


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404 and request.path.startswith("/openai/"):
            return json_response({"error": {"message": f"Invalid URL ({request.method} {request.path})",
                                            "type": "invalid_request_error", "param": None, "code": None}}, 404)
        if exc.status == 404 and request.path.startswith("/wix/"):
            return json_response({"message": "NOT_FOUND: no such endpoint", "details": {}}, 404)
        if exc.status == 404 and request.path.startswith("/replicate/v1/"):
            return json_response({"title": "Not found", "detail": "Not found.", "status": 404}, 404)
        raise


def create_app(config: Optional[dict] = None, state: Optional[SimState] = None) -> web.Application:
    state = state or SimState(config)
    app = web.Application(middlewares=[_errors, _timeouts, _cut_answers], client_max_size=32 * 1024 * 1024)
    app[STATE_KEY] = state
    state.openai.add_routes(app)
    state.replicate.add_routes(app)
    state.wix.add_routes(app)
    app.router.add_get("/_sim/health", health)
    app.router.add_get("/_sim/config", get_config)
    app.router.add_post("/_sim/config", post_config)
    app.router.add_post("/_sim/reset", reset)
    app.router.add_get("/_sim/ledger", ledger)
    app.router.add_get("/_sim/events", events)
    app.cleanup_ctx.append(_background)
    return app
