"""The moment a permitted request really leaves for the provider: a hook at the socket.

Written by hand because no HTTP client exposes "the bytes go out now" as an
event: the limiter's safety rule (a permit is used within its grace) needs that
moment, not the moment the SDK was called. See docs/limiter.md.
"""
from __future__ import annotations

import importlib
import time
from typing import Any

from streams.limiter.client import Permit, budgets, current_permit
from streams.metrics import budget_label, late_sends_total, permit_send_delay_seconds
from streams.limiter.specs import wire_margin

# the provider's own queue before admission (on this 2-core test box the
# simulator alone can take tens of ms to get to a request). A permit whose
# request leaves later than use_by - WIRE_MARGIN is reported as late.
WIRE_MARGIN = wire_margin()


def _on_wire() -> Permit | None:
    """A request is about to be written to a provider's socket: the moment that counts.

    `Permit.usable()` is checked before the provider call, but an SDK can spend
    a while (building the request, a pool slot, a GC pause) before the request
    really leaves, and an answer may reach a busy worker after use_by. Here we
    see when the request really leaves. Returns the permit if that is later
    than use_by - WIRE_MARGIN: the caller must report it before sending, and
    the coordinator then counts it until it has left the provider's window too.
    """
    permit = current_permit.get()
    if permit is None or permit.sent_at is not None:
        return None  # not a permitted call, or the permit's request already went out
    now = time.time()
    permit.sent_at = now
    if permit.granted_at:
        permit_send_delay_seconds.labels(budget_label(permit.primary)).observe(max(0.0, now - permit.granted_at))
    if now + WIRE_MARGIN > permit.use_by:
        late_sends_total.inc()
        return permit
    return None


class PermitOverdue(ConnectionError):
    """A late permit's request would leave after its last use: it is not sent (the stage asks again)."""


def _refuse_if_overdue(permit: Permit) -> None:
    """A late send is safe until the permit's last use (docs/limiter.md, "Last use"): the report then has
    the rest of the window to reach the coordinator before the grant's entry leaves it. Later (a report
    whose ack waited out a broker outage, a worker stalled), the room may have been handed out again,
    and the provider would see one more than the limit: the request does not go."""
    if time.time() > max(permit.use_by, permit.last_use):
        permit.sent_at = None  # not sent: another request under this permit is checked again
        raise PermitOverdue(f"permit {permit.grant_id} is past its last use; its request was not sent")


async def _report_if_late() -> None:
    late = _on_wire()
    if late is not None:
        # On the broker before the request goes: the coordinator learns of
        # it even if this worker dies right after sending. The report names
        # a moment a little ahead; if the broker's ack took longer, again.
        allowance = 0.05
        while True:
            _refuse_if_overdue(late)
            anchor = time.time() + WIRE_MARGIN + allowance
            await budgets.report_late(late, anchor)
            if time.time() + WIRE_MARGIN <= anchor:
                break
            allowance *= 2
        _refuse_if_overdue(late)


def _hook_wire(cls: Any) -> None:
    original = cls.handle_async_request
    if getattr(original, "_blogstream_wire", False):
        return

    async def handle_async_request(self: Any, request: Any) -> Any:
        await _report_if_late()
        return await original(self, request)

    handle_async_request._blogstream_wire = True  # type: ignore[attr-defined]
    cls.handle_async_request = handle_async_request


def _hook_aiohttp_connector(cls: Any) -> None:
    """aiohttp writes the request as soon as its connector hands over a connection
    (a pooled one or a new one, after any wait for a free slot): that is the moment."""
    original = cls.connect
    if getattr(original, "_blogstream_wire", False):
        return

    async def connect(self: Any, req: Any, traces: Any, timeout: Any) -> Any:
        connection = await original(self, req, traces, timeout)
        try:
            await _report_if_late()
        except BaseException:
            connection.release()  # not sent: the connection goes back to the pool
            raise
        return connection

    connect._blogstream_wire = True  # type: ignore[attr-defined]
    cls.connect = connect


def install() -> None:
    """Hook every HTTP client this process can load (called by streams/worker.py).

    The connectors send through aiohttp (httpx and the openai SDK over an aiohttp
    transport: it costs a fraction of httpcore's CPU per call), hooked at its
    connector. httpcore's connection classes (httpx's own transport, used by the
    CLI and by anyone who builds a connector with it) write the request right after
    handle_async_request starts (the pool has already picked and connected the
    connection); httpcore2 serves httpx2 (the openai SDK's default).
    """
    try:
        from aiohttp.connector import BaseConnector
    except ImportError:
        pass
    else:
        _hook_aiohttp_connector(BaseConnector)
    for module in ("httpcore._async.http11", "httpcore._async.http2", "httpcore2._async.http11", "httpcore2._async.http2"):
        try:
            mod = importlib.import_module(module)
        except ImportError:  # e.g. http2 support (h2) not installed
            continue
        for name in ("AsyncHTTP11Connection", "AsyncHTTP2Connection"):
            if hasattr(mod, name):
                _hook_wire(getattr(mod, name))
