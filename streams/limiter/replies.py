"""This worker's answers from the coordinator, read on the limiter's loop and handed to the main loop's asks.

Faust's reply consumer reads them too, on the main loop, behind full stage
queues: an answer took up to 1.5 s from the coordinator's producer to the
waiting ask in the 3-minute tier run (docs/bench-tier.md, session 15). This
reader takes the reply topic's records on the limiter's own loop (own_loop.py)
with a consumer of its own, outside any group, from the end of the topic at its
start, and fulfils the waiting promise on the main loop: one turn of it instead
of Faust's fetch, drain and queues. Faust's reader stays as it was: whichever
comes first answers, the other finds the promise done (faust_fixes 6).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from streams.app import app
from streams.limiter.own_loop import OwnLoop
from streams.limiter.reader import own_consumer, read_partition

log = logging.getLogger(__name__)


def fulfill_here(correlation_id: str, value: dict[str, Any]) -> None:
    """On the main loop: the answer to this process's waiting ask. One nobody waits for any more (the ask
    gave up, or a copy was answered) is dropped, as Faust's reply consumer would."""
    waiting = app._reply_consumer._waiting  # type: ignore[attr-defined]
    for promise in list(waiting.get(correlation_id, ())):
        if not promise.done():
            promise.fulfill(correlation_id, {**value})


def answer_of(data: bytes | None) -> tuple[str, dict[str, Any]] | None:
    """(correlation id, value) of a reply record (Faust's ReqRepResponse in JSON), or None if it is not one."""
    try:
        record = json.loads(data) if data else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("correlation_id"), str):
        return None
    value = record.get("value")
    return (record["correlation_id"], value) if isinstance(value, dict) else None


async def read_replies(own: OwnLoop) -> None:
    """On the limiter's loop, for as long as it runs: this worker's reply topic, from its end at the start."""
    from aiokafka import TopicPartition

    async def from_the_end() -> None:
        return None

    async def handle(record: Any) -> None:
        answer = answer_of(record.value)
        if answer is not None:
            own.on_main(fulfill_here, *answer)

    # The broker away: Faust's reader still answers meanwhile.
    await read_partition(TopicPartition(app.conf.reply_to, 0), handle, first_offset=from_the_end,
                         new_consumer=lambda: own_consumer("answers"), what="this worker's answers")
