"""`blogstream topics tail`: a topic's records decoded in a terminal, dead letters with their reasons."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stack.harness import KAFKA, ROOT
from streams.contract import encode

pytestmark = pytest.mark.integration


def blogstream(*args: str, prefix: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BLOGSTREAM_TOPIC_PREFIX=prefix, BLOGSTREAM_KAFKA_BROKER=f"kafka://{KAFKA}")
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
async def topics():
    prefix = f"tail{uuid.uuid4().hex[:8]}."
    names = [f"{prefix}blog.requests", f"{prefix}blog.dlq"]
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(n, num_partitions=2, replication_factor=1) for n in names])
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        yield prefix, producer
    finally:
        await producer.stop()
        await admin.delete_topics(names)
        await admin.close()


async def test_tail_shows_requests_decoded_and_dead_letters_with_their_reasons(topics):
    prefix, producer = topics
    request = {"request_id": "req-tail-1", "site_id": "shop-u", "topic": "Tea für alle", "keywords": ["tea"],
               "language": "de", "tone": "friendly", "target_words": 300, "requested_at": 1_760_000_000_000,
               "audience": None}
    await (await producer.send(f"{prefix}blog.requests", key=b"shop-u", value=encode("BlogRequest", request)))
    await (await producer.send(f"{prefix}blog.requests", key=b"shop-x", value=b"\x00\x01 not a record"))
    await (await producer.send(f"{prefix}blog.dlq", key=b"shop-x", value=b"{\"broken\": true",
                               headers=[("blogstream-error", b"the body is not valid JSON"),
                                        ("blogstream-stage", b"generate"),
                                        ("blogstream-source", b"blog.requests/1/7")]))

    out = blogstream("topics", "tail", "requests", "--no-follow", "--json", prefix=prefix)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    good = next(r for r in records if "value" in r)
    assert good["value"]["request_id"] == "req-tail-1" and good["value"]["topic"] == "Tea für alle"
    assert good["key"] == "shop-u"
    bad = next(r for r in records if "error" in r)
    assert bad["error"].startswith("not a valid BlogRequest") and bad["key"] == "shop-x"

    out = blogstream("topics", "tail", "blog.dlq", "--no-follow", prefix=prefix)
    assert out.returncode == 0, out.stderr
    assert "reason='the body is not valid JSON' stage=generate source=blog.requests/1/7" in out.stdout
    assert '{"broken": true' in out.stdout


def test_tail_of_an_unknown_topic_is_a_one_line_error():
    out = blogstream("topics", "tail", "blog.nope", "--no-follow", prefix="")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("blogstream: error: blog.nope is not a blogstream topic")
    assert "Traceback" not in out.stderr


def test_tail_without_a_broker_is_a_one_line_error():
    # The README's promise: errors are one line. With no broker, aiokafka's own log line came first ("Unable
    # connect to ..."), and after ours Python's "Unclosed AIOKafkaConsumer" warning with the object's repr.
    listener = __import__("socket").socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: refused at once
    env = dict(os.environ, BLOGSTREAM_KAFKA_BROKER=f"kafka://127.0.0.1:{port}")
    out = subprocess.run([sys.executable, "-m", "streams.cli", "topics", "tail", "blog.requests", "--no-follow"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"blogstream: error: Kafka at 127.0.0.1:{port} is not reachable (KafkaConnectionError), start it "
        "(make stack-up) or set BLOGSTREAM_KAFKA_BROKER"]


def test_a_dead_letter_cut_to_fit_says_so():
    from streams.cli.topics import describe

    cut = b"the record was 1048000 bytes ...; the whole record is at blog.requests/3/9 while that topic keeps it"
    shown = describe("blog.dlq", b"k", b"xx", [("blogstream-error", b"too big"), ("blogstream-cut", cut)])
    assert shown["cut"] == cut.decode() and shown["value"] == "xx"
    assert "cut" not in describe("blog.dlq", b"k", b"xx", [("blogstream-error", b"bad")])
