"""`blogstream topics tail TOPIC`: a topic's records, decoded, in a terminal.

    blogstream topics tail blog.requests            the last 10 records, then follow new ones
    blogstream topics tail dlq -n 50 --no-follow    dead letters with their reasons
    blogstream topics tail results --json           one JSON object per record (for jq)

Values are the Avro contract's records (streams/contract), shown as JSON; a
dead letter shows the reason, stage and source from its headers and its bytes
as text (or hex when they are not text). Plain Kafka (aiokafka), no consumer
group: reading never moves anyone's offsets.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import Any

import click

from streams.cli.output import CliError

RECORDS = {"blog.requests": "BlogRequest", "blog.drafts": "BlogDraft", "blog.illustrated": "BlogIllustrated",
           "blog.results": "BlogResult", "blog.dlq": None}


def printable(text: Any) -> str:
    """Text from a record as a terminal shows it: what is not printable (ESC and the other controls, line
    breaks, bidi overrides) escaped, so a record's key cannot move the cursor, clear lines or forge a line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                   if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text)


def topic_of(name: str) -> str:
    """`requests`, `blog.requests` or the full prefixed name -> the stage topic's base name."""
    from streams.settings import settings  # read when a command runs: a bad setting is a one-line error

    base = name.removeprefix(settings.topic_prefix)
    base = base if base.startswith("blog.") else f"blog.{base}"
    if base not in RECORDS:
        raise CliError(f"{name} is not a blogstream topic", f"choose one of {', '.join(RECORDS)}", exit_code=2)
    return base


def describe(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> dict[str, Any]:
    """One record as JSON: its decoded value, or why it could not be decoded."""
    from streams.contract import RecordError, decode, decode_request

    out: dict[str, Any] = {"key": key.decode("utf-8", "replace") if key is not None else None}
    data = value or b""
    if base == "blog.dlq":
        found = {k: v.decode("utf-8", "replace") for k, v in headers if k.startswith("blogstream-")}
        out.update(reason=found.get("blogstream-error"), stage=found.get("blogstream-stage"),
                   source=found.get("blogstream-source"))
        if "blogstream-cut" in found:  # too large to copy whole: the source offset has the whole record
            out["cut"] = found["blogstream-cut"]
        try:
            out["value"] = data.decode("utf-8")
        except UnicodeDecodeError:
            out["value_hex"] = data.hex()
        return out
    try:
        out["value"] = decode_request(data) if base == "blog.requests" else decode(RECORDS[base], data)
    except RecordError as exc:
        out["error"] = f"not a valid {RECORDS[base]}: {exc.reason}"
        out["value_hex"] = data[:512].hex()
    return out


async def partitions_of(topic: str) -> list[int]:
    """The topic's partition numbers, from the broker (empty if there is no such topic)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.settings import settings

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [p["partition"] for d in described if not d.get("error_code") for p in d.get("partitions", ())]


async def tail(base: str, count: int, follow: bool, emit: Any) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.settings import settings

    topic = f"{settings.topic_prefix}{base}"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, request_timeout_ms=10_000)
    client_log = logging.getLogger("aiokafka")  # a failed start is said below, in one line: not also by aiokafka
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(consumer.start(), timeout=15)
    except Exception as exc:
        await consumer.stop()  # else Python warns "Unclosed AIOKafkaConsumer" after our line
        raise CliError(f"Kafka at {settings.kafka_bootstrap} is not reachable ({type(exc).__name__})",
                       "start it (make stack-up) or set BLOGSTREAM_KAFKA_BROKER") from None
    finally:
        client_log.setLevel(level)
    shown = 0
    try:
        partitions = await partitions_of(topic)
        if not partitions:
            raise CliError(f"topic {topic} does not exist (yet)", "start a worker once: it creates the topics")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:  # about the last `count` records of the topic, spread over its partitions
            consumer.seek(tp, max(starts[tp], ends[tp] - count))
        backlog = {tp: ends[tp] for tp in tps}
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            records = sorted((m for ms in batches.values() for m in ms), key=lambda m: m.timestamp)
            for message in records:
                emit({"partition": message.partition, "offset": message.offset,
                      "time": datetime.fromtimestamp(message.timestamp / 1000, timezone.utc).isoformat(),
                      **describe(base, message.key, message.value, list(message.headers or ()))})
                shown += 1
            if not follow and all([await consumer.position(tp) >= backlog[tp] for tp in tps]):
                return shown
    finally:
        await consumer.stop()


@click.group()
def topics() -> None:
    """Look at blogstream's topics."""


@topics.command("tail")
@click.argument("topic")
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=10, show_default=True,
              help="Records to show from the end of each partition before following.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep showing new records.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record on stdout.")
def tail_command(topic: str, count: int, follow: bool, as_json: bool) -> None:
    """Print TOPIC's records decoded (requests, drafts, illustrated, results, dlq)."""
    base = topic_of(topic)

    def emit(record: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False, default=str))
            return
        # Any producer writes any key (and headers): shown escaped, never as terminal controls.
        head = f"{record['time']} {base}/{record['partition']}@{record['offset']} key={printable(record['key'])}"
        if base == "blog.dlq":
            body = (f"reason={printable(repr(record.get('reason')))} stage={printable(record.get('stage'))} "
                    f"source={printable(record.get('source'))}")
            if "cut" in record:
                body += f" cut={printable(record['cut'])}"
            click.echo(f"{head} {body}\n    {printable(repr(record.get('value', record.get('value_hex'))))}")
        elif "error" in record:
            click.echo(f"{head} {printable(record['error'])}")
        else:
            click.echo(f"{head} {printable(json.dumps(record['value'], ensure_ascii=False))}")

    try:
        asyncio.run(tail(base, count, follow, emit))
    except KeyboardInterrupt:
        pass
