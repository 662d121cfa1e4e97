"""One partition read in order on the limiter's loop: the coordinator's asks and each worker's answers.

Both are read by a consumer of their own, outside any consumer group, because
Faust's consumer runs on the main loop behind full stage queues (own_loop.py
says why that matters). Written by hand around aiokafka's consumer for what it
does not do itself: start again from the next offset after the broker went
away (a new consumer after a back-off, no record handled twice or skipped),
and stop between two records once the reading is no longer wanted (a takeover
that ended), not at the next fetch.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable

from streams.app import app
from streams.log_limit import Backoff, LogLimit

log = logging.getLogger(__name__)

READ_WAIT_MS = 100  # the longest wait on an empty partition (a record ends it at once)


async def read_partition(
    tp: Any,
    handle: Callable[[Any], Awaitable[None]],
    *,
    first_offset: Callable[[], Awaitable[int | None]],
    new_consumer: Callable[[], Any],
    keep_going: Callable[[], bool] = lambda: True,
    what: str,
) -> None:
    """Hand every record of `tp` to `handle`, in order, once each, while `keep_going()`.

    `first_offset()` says where to begin (None: the partition's end at that
    moment); it is awaited once, again only if it failed. A failure of the
    broker (or of `handle`) costs a back-off and a new consumer, which reads on
    from the record after the last one handed over.
    """
    backoff = Backoff(first=0.5, cap=10.0)
    failures = LogLimit(log, f"limiter: reading {what} failed", interval=60.0)
    position: int | None = None
    begun = False
    while keep_going():
        consumer = None
        try:
            if not begun:
                position, begun = await first_offset(), True
                continue  # keep_going() again: the beginning may have taken a while
            consumer = new_consumer()
            await consumer.start()
            consumer.assign([tp])
            if position is None:
                await consumer.seek_to_end(tp)
                # Fixed now, so that a new consumer after a failure does not skip what came meanwhile.
                position = await consumer.position(tp)
            else:
                consumer.seek(tp, position)
            while keep_going():
                batches = await consumer.getmany(tp, timeout_ms=READ_WAIT_MS)
                for record in batches.get(tp, ()):
                    if not keep_going():
                        return
                    position = record.offset + 1
                    await handle(record)
                if backoff.failures:
                    backoff.reset()
                    failures.ok()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker away: read again from `position` after a back-off
            failures.failed(exc)
            await asyncio.sleep(backoff.next())
        finally:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()


def own_consumer(purpose: str) -> Any:
    """A consumer outside any group, for the limiter's loop, connecting as Faust's producer does."""
    import aiokafka

    faust_producer = app.producer
    config = {**faust_producer._settings_default(), **faust_producer._settings_auth()}
    wanted = ("bootstrap_servers", "security_protocol", "api_version", "sasl_mechanism", "sasl_plain_username",
              "sasl_plain_password", "ssl_context", "sasl_kerberos_service_name", "sasl_kerberos_domain_name",
              "sasl_oauth_token_provider")
    return aiokafka.AIOKafkaConsumer(
        **{k: v for k, v in config.items() if k in wanted}, client_id=f"{faust_producer.client_id}-limiter-{purpose}",
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=READ_WAIT_MS,
    )
