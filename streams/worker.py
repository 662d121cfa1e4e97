"""The worker: the Faust app with every agent, route and timer, in the order a request meets them.

`faust -A streams worker` asks the `streams` package for `app`, and only then
is this module imported (streams/__init__.py). Nothing else imports it: the
CLI, the connectors and the tests of one part load just that part.

    blog.requests ─generate─▶ blog.drafts ─image─▶ blog.illustrated ─publish─▶ blog.results
          └─────────────── sink: every topic ──▶ Postgres blog_generations ◀──────┘
"""
from __future__ import annotations

import asyncio
import os
import time

from streams.settings import settings


def use_uvloop() -> None:
    """Make uvloop the event loop of `faust -A streams worker` (docs/intake.md, "Event loop").

    It roughly halves the CPU the intake's HTTP and Kafka I/O cost. This runs when
    faust imports the app, before the worker creates its loop. `faust -L aio` (or
    F_LOOP) still decides when given, and BLOGSTREAM_EVENT_LOOP=asyncio turns it off.
    """
    if settings.event_loop != "uvloop" or os.environ.get("FAUST_LOOP") or os.environ.get("F_LOOP"):
        return
    try:
        asyncio.get_running_loop()
        return  # imported from code that already runs a loop: leave its choice alone
    except RuntimeError:
        pass
    try:
        import uvloop
    except ImportError:
        return
    if not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy):
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


use_uvloop()

from streams import faust_fixes  # noqa: E402
from streams.app import LIMITER_TOPIC, STAGE_TOPICS, app, topic_name  # noqa: E402
from streams.limiter import wire  # noqa: E402
from connectors import response_cycles  # noqa: E402

# Faust's rules that lost stage events (and stalled permit replies), and the
# socket hook that sees when a permitted request really leaves: patched once, here.
faust_fixes.install((topic_name(t) for t in STAGE_TOPICS), urgent=[topic_name(LIMITER_TOPIC)])
wire.install()
response_cycles.install()  # provider answers freed by reference counting, not by collector pauses


@app.timer(interval=5.0)
async def watch_table_recovery() -> None:
    """A table recovery that gets none of its records is sought again, then rebalanced (faust_fixes, 10)."""
    try:
        await faust_fixes.recovery_watch.check(app, time.monotonic())
    except Exception:  # a watch that fails must not stop the worker: it looks again in 5 s
        faust_fixes.log.warning("could not check the table recovery", exc_info=True)


# The global limiter: one coordinator (on the worker that owns blog.limiter), a client in every worker.
from streams.limiter import agent, alive, client, coordinator  # noqa: E402,F401

# The stages, in the order a request goes through them, and the sink that records every step.
from streams.pipeline import generate, image, publish, sink  # noqa: E402,F401

# The bulk lane's timer: batches sent to the OpenAI Batch API and their results read back (when enabled).
from streams.pipeline import batch_poll  # noqa: E402,F401

# HTTP: intake, one request's status and retry, site controls, limiter stats / health / metrics.
from streams.api import blogs, costs, intake, ops, sites  # noqa: E402,F401

# The heartbeat log line and consumer lag.
from streams import monitoring  # noqa: E402,F401

__all__ = ["app"]
