"""Every worker tells the coordinator it is alive, so that a dead worker's site slots are released.

Why: see streams/limiter/workers.py. One small one-way message every ALIVE_EVERY
seconds per worker, batched with the worker's other casts.
"""
from __future__ import annotations

import logging

from streams.app import app
from streams.limiter.client import budgets
from streams.limiter.workers import ALIVE_EVERY

log = logging.getLogger(__name__)


async def say_alive() -> None:
    try:
        await budgets.casts.send({"op": "alive", "worker": budgets.instance, "route": app.conf.reply_to})
    except Exception:  # the broker away: the coordinator hears nobody then, and blames nobody (workers.py)
        log.debug("limiter: the alive message was not sent", exc_info=True)


app.timer(interval=ALIVE_EVERY)(say_alive)  # the timer wraps it in its loop; say_alive itself says it once
