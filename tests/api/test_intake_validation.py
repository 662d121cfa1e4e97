"""The intake's decisions without a worker: parsing, validation, auth, the pending gauge."""
from __future__ import annotations

import asyncio
import gc
import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.contract import decode, encode, encode_checked
from tests.contract.robustness import HOSTILE_REQUESTS, JSONISH

from streams.api.admission import Decision, PendingGauge, PendingSnapshot, QueueUnknown, rejection
from streams.api.burst_gc import BurstGC
from streams.api.http import IntakeError, bearer_ok
from streams.api.producer import RequestProducer
from streams.api.validation import (
    OwnerLookup, check_items, conflict, invalid, parse_body, reused_id_errors, unknown_site_errors,
)


def good(n: int = 0, **fields):
    return {"request_id": f"req-{n}", "site_id": "shop-1", "topic": f"Topic {n}", **fields}


def body(value) -> bytes:
    return json.dumps(value).encode()


# --------------------------------------------------------------------------- parse_body


def test_single_object_is_one_request():
    items, batch = parse_body(body(good()), max_batch=10)
    assert items == [good()] and batch is False


def test_batch_object_is_a_batch():
    items, batch = parse_body(body({"requests": [good(1), good(2)]}), max_batch=10)
    assert [i["request_id"] for i in items] == ["req-1", "req-2"] and batch is True


@pytest.mark.parametrize(
    "raw, status, words",
    [
        (b"", 400, "empty"),
        (b"   \n", 400, "empty"),
        (b"{\"site_id\": ", 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b"\"text\"", 422, "must be a JSON object"),
        (b"null", 422, "must be a JSON object"),
    ],
)
def test_bodies_that_are_not_submissions(raw, status, words):
    with pytest.raises(IntakeError) as err:
        parse_body(raw, max_batch=10)
    assert err.value.status == status
    assert words in err.value.error


def test_json_error_says_where():
    with pytest.raises(IntakeError) as err:
        parse_body(b'{"site_id": "a",\n "topic": }', max_batch=10)
    assert "line 2 column" in err.value.error


@pytest.mark.parametrize(
    "value, message",
    [
        ({"requests": []}, "must not be empty"),
        ({"requests": "x"}, "must be a list"),
        ({"requests": {"a": 1}}, "must be a list"),
        ({"requests": [good(i) for i in range(11)]}, "has 11 requests; at most 10 per batch"),
    ],
)
def test_empty_wrong_and_huge_batches(value, message):
    with pytest.raises(IntakeError) as err:
        parse_body(body(value), max_batch=10)
    assert err.value.status == 422
    assert err.value.body()["errors"] == [{"item": 0, "field": "requests", "message": err.value.body()["errors"][0]["message"]}]
    assert message in err.value.body()["errors"][0]["message"]


def test_extra_batch_keys_are_named():
    with pytest.raises(IntakeError) as err:
        parse_body(body({"requests": [good()], "token": "x"}), max_batch=10)
    assert err.value.body()["errors"][0]["field"] == "token"


# --------------------------------------------------------------------------- check_items


def test_defaults_are_filled_and_ids_generated():
    requests, errors = check_items([{"site_id": "shop-1", "topic": "Hello"}], batch=False, now_ms=1_700_000_000_000)
    assert errors == []
    (request,) = requests
    assert len(request["request_id"]) == 32 and request["requested_at"] == 1_700_000_000_000


def test_valid_items_come_back_as_complete_records_ready_to_encode():
    requests, errors = check_items([good(1), good(2, keywords=["a"], audience="cooks")], batch=True,
                                   now_ms=1_700_000_000_005)
    assert errors == []
    for request in requests:  # defaults filled, checked once: encoded as is, the same bytes as encode()
        assert set(request) == {"request_id", "site_id", "topic", "keywords", "language", "tone", "target_words",
                                "requested_at", "audience", "priority", "retry"}
        assert encode_checked("BlogRequest", request) == encode("BlogRequest", request)


def test_every_problem_names_item_and_field():
    items = [
        good(0),
        good(1, topic=5),
        "not an object",
        good(3, keywords=["ok", "   "], target_words=10),
        good(4, colour="red"),
        {"request_id": "req-5", "topic": "no site"},
    ]
    _, errors = check_items(items, batch=True)
    found = {(e.item, e.field) for e in errors}
    assert found == {
        (1, "requests[1].topic"),
        (2, "requests[2]"),
        (3, "requests[3].keywords[1]"),
        (3, "requests[3].target_words"),
        (4, "requests[4].colour"),
        (5, "requests[5].site_id"),
    }
    err = invalid(errors)
    assert err.status == 422 and err.error.startswith("nothing was accepted: 6 problems")
    assert all(set(e) == {"item", "field", "message"} for e in err.body()["errors"])


def test_single_request_fields_have_no_prefix():
    _, errors = check_items([good(language="english!")], batch=False)
    assert [(e.item, e.field) for e in errors] == [(0, "language")]


def test_wrong_types():
    _, errors = check_items(
        [good(target_words="800", keywords="a,b", audience=7, request_id=12, requested_at=True)], batch=False
    )
    assert {e.field for e in errors} == {"target_words", "keywords", "audience", "request_id", "requested_at"}


def test_ids_must_be_unique_in_a_batch():
    _, errors = check_items([good(1), good(2), good(1)], batch=True)
    assert [(e.item, e.field) for e in errors] == [(2, "requests[2].request_id")]
    assert "repeats requests[0].request_id" in errors[0].message


def test_html_and_script_are_accepted_as_text():
    topic = '<script>alert("x")</script> & <b>bold</b>'
    requests, errors = check_items([good(topic=topic, keywords=["<img src=x onerror=alert(1)>"])], batch=False)
    assert errors == [] and requests[0]["topic"] == topic


def test_values_are_not_echoed_in_errors():
    secret = "sk-live-abcdef0123456789"
    _, errors = check_items([good(api_key=secret, topic=secret * 50)], batch=False)
    text = json.dumps(invalid(errors).body())
    assert secret not in text and "api_key" in text


def test_unknown_sites_are_reported_per_item():
    requests, _ = check_items([good(1), good(2, site_id="ghost"), good(3, site_id="ghost")], batch=True)
    errors = unknown_site_errors(requests, {"shop-1": True, "ghost": False}, batch=True)
    assert [(e.item, e.field) for e in errors] == [(1, "requests[1].site_id"), (2, "requests[2].site_id")]
    assert "not registered" in errors[0].message and "sites add ghost" in errors[0].message


def test_a_number_with_thousands_of_digits_is_a_400_not_a_crash():
    # Python refuses to parse integers of more than 4300 digits with a ValueError (not a JSONDecodeError).
    with pytest.raises(IntakeError) as err:
        parse_body(b'{"site_id": "shop-1", "topic": "t", "target_words": ' + b"9" * 5000 + b"}", max_batch=10)
    assert err.value.status == 400 and "too many digits" in err.value.error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("topic", "\ud800"), ("topic", "a\x00b"), ("keywords", ["ok", "\udfff"]), ("audience", "\x00"),
        ("tone", "\ud83d"),  # half of an emoji's surrogate pair
        ("requested_at", 10**30), ("requested_at", 4_102_444_800_000), ("requested_at", 0), ("requested_at", 1.7e12),
    ],
)
def test_values_that_cannot_be_encoded_or_stored_are_422_naming_the_field(field, value):
    raw = json.dumps(good(**{field: value})).encode()  # ensure_ascii: a surrogate arrives as "\ud800"
    items, batch = parse_body(raw, max_batch=10)
    requests, errors = check_items(items, batch=batch)
    assert [e.field.split("[")[0] for e in errors] == [field]
    answer = invalid(errors)
    assert answer.status == 422 and json.dumps(answer.body()).encode("utf-8")


def test_a_request_id_of_another_site_is_a_409_that_does_not_name_that_site():
    requests, _ = check_items([good(1), good(2, site_id="shop-2"), good(3)], batch=True)
    owners = {"req-1": "shop-1", "req-2": "shop-9"}  # req-1 is shop-1's own repeat: fine
    errors = reused_id_errors(requests, owners, batch=True)
    assert [(e.item, e.field) for e in errors] == [(1, "requests[1].request_id")]
    answer = conflict(errors)
    assert answer.status == 409 and "shop-9" not in json.dumps(answer.body())
    assert errors[0].message == "request id req-2 is already used by another site; choose another id"
    assert reused_id_errors(requests, {}, batch=True) == []


async def test_owner_lookups_of_submissions_that_arrive_together_share_one_query():
    queries: list[list[str]] = []

    async def fetch(ids):
        queries.append(ids)
        await asyncio.sleep(0.01)
        return {"a": "shop-1", "c": "shop-3"}

    lookup = OwnerLookup(fetch)
    first = await asyncio.gather(lookup.owners(["a", "b"]), lookup.owners(["c"]), lookup.owners(["d"]))
    assert first == [{"a": "shop-1"}, {"c": "shop-3"}, {}] and queries == [["a", "b", "c", "d"]]
    # Asked while a query runs: the next query takes them all.
    running = asyncio.ensure_future(lookup.owners(["a"]))
    await asyncio.sleep(0.001)
    later = await asyncio.gather(lookup.owners(["c"]), lookup.owners(["x"]), running)
    assert later == [{"c": "shop-3"}, {}, {"a": "shop-1"}] and queries[1:] == [["a"], ["c", "x"]]


async def test_an_owner_lookup_that_fails_fails_every_submission_that_waited_for_it():
    async def fetch(ids):
        raise ConnectionRefusedError("postgres is down")

    lookup = OwnerLookup(fetch)
    results = await asyncio.gather(lookup.owners(["a"]), lookup.owners(["b"]), return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results)


# --------------------------------------------------------------------------- any body at all

BODIES = (
    HOSTILE_REQUESTS
    | st.builds(lambda items: {"requests": items}, st.lists(HOSTILE_REQUESTS, min_size=1, max_size=4))
    | st.builds(lambda items: {"requests": items}, st.lists(HOSTILE_REQUESTS | JSONISH, max_size=4))
    | JSONISH
)


@hypothesis_settings(database=None, deadline=None, max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES)
def test_any_json_body_is_accepted_whole_or_refused_with_a_4xx_naming_each_field(value):
    raw = json.dumps(value).encode()  # what a client sends (surrogates as escapes)
    try:
        items, batch = parse_body(raw, max_batch=10)
    except IntakeError as err:
        assert 400 <= err.status < 500
        json.dumps(err.body()).encode("utf-8")
        return
    requests, errors = check_items(items, batch=batch)
    if errors:
        answer = invalid(errors)
        assert answer.status == 422 and json.dumps(answer.body()).encode("utf-8")
        for error in errors:
            assert error.field.startswith(f"requests[{error.item}]") if batch else error.item == 0
        return
    for request in requests:  # accepted: it goes to Kafka as it is, and reads back the same
        assert decode("BlogRequest", encode_checked("BlogRequest", request)) == request


# --------------------------------------------------------------------------- auth


def test_bearer_token():
    assert bearer_ok(None, "")  # off
    assert bearer_ok("Bearer s3cret", "s3cret")
    assert bearer_ok("bearer   s3cret ", "s3cret")
    assert not bearer_ok(None, "s3cret")
    assert not bearer_ok("Bearer wrong", "s3cret")
    assert not bearer_ok("Basic s3cret", "s3cret")
    assert not bearer_ok("s3cret", "s3cret")


def test_rejection_bodies():
    full = rejection(Decision(False, "queue_full", pending=10_000, limit=10_000, room=0))
    assert full.status == 429 and full.headers["Retry-After"].isdigit()
    assert full.body()["reason"] == "queue_full" and "10000 requests are pending" in full.error
    site = rejection(Decision(False, "site_queue_full", pending=8, limit=10, site_id="shop-1", room=2))
    assert site.body()["site_id"] == "shop-1" and "send at most 2 now" in site.error
    assert site.body()["lane"] == "interactive"
    bulk = rejection(Decision(False, "queue_full", pending=9_000, limit=9_000, lane="bulk"))
    assert bulk.body()["lane"] == "bulk" and "BLOGSTREAM_QUEUE_INTERACTIVE_SHARE" in bulk.error
    assert "9000 requests are pending, and bulk ones are taken only up to 9000" in bulk.error
    bulk_site = rejection(Decision(False, "site_queue_full", pending=9, limit=10, site_id="shop-1", room=1, lane="bulk"))
    assert "shop-1 has 9 bulk requests pending and its limit (max_queued_bulk) is 10" in bulk_site.error


# --------------------------------------------------------------------------- the pending gauge


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeDb:
    """PENDING rows per site plus the ids that have a row."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}
        self.bulk: dict[str, int] = {}  # bulk PENDING rows per site
        self.rows: set[str] = set()
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, ids: list[str]) -> PendingSnapshot:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("database down")
        return PendingSnapshot(dict(self.pending), {i for i in ids if i in self.rows}, dict(self.bulk))


def reqs(site: str, *ids: str, priority: str | None = None):
    return [{"request_id": i, "site_id": site, **({"priority": priority} if priority else {})} for i in ids]


@pytest.fixture
def db():
    return FakeDb()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def gauge(db, clock):
    return PendingGauge(db.fetch, refresh_seconds=1.0, max_age_seconds=30.0, clock=clock)


async def test_admits_up_to_the_limit_and_not_one_more(gauge, db):
    db.pending = {"a": 3}
    await gauge.fresh()
    assert gauge.admit(reqs("a", "r1", "r2"), limit=5, site_limits={"a": 100}).ok
    # r1 and r2 are still being produced: they count
    no = gauge.admit(reqs("a", "r3"), limit=5, site_limits={"a": 100})
    assert (no.ok, no.reason, no.pending, no.room) == (False, "queue_full", 5, 0)


async def test_a_batch_larger_than_the_room_is_refused_with_the_room(gauge, db):
    db.pending = {"a": 7}
    await gauge.fresh()
    no = gauge.admit(reqs("a", *[f"r{i}" for i in range(5)]), limit=10, site_limits={"a": 100})
    assert (no.ok, no.room) == (False, 3)


async def test_site_limit(gauge, db):
    db.pending = {"a": 9, "b": 1}
    await gauge.fresh()
    no = gauge.admit(reqs("a", "r1", "r2"), limit=100, site_limits={"a": 10})
    assert (no.ok, no.reason, no.site_id, no.pending, no.limit, no.room) == (False, "site_queue_full", "a", 9, 10, 1)
    assert gauge.admit(reqs("b", "r3", "r4"), limit=100, site_limits={"b": 10}).ok


async def test_accepted_requests_count_until_the_database_has_them(gauge, db, clock):
    await gauge.fresh()
    batch = reqs("a", "r1", "r2")
    assert gauge.admit(batch, limit=10, site_limits={"a": 10}).ok
    gauge.settle(batch, produced=True)
    assert gauge.total() == 2 and gauge.site("a") == 2
    clock.now += 1.5
    await gauge.fresh()  # the sink has not written them yet
    assert gauge.total() == 2
    db.rows |= {"r1", "r2"}
    db.pending = {"a": 2}
    clock.now += 1.5
    await gauge.fresh()  # now they are PENDING rows: counted once, not twice
    assert gauge.total() == 2 and gauge.figures()["accepted_here_not_yet_in_database"] == 0
    db.pending = {}
    clock.now += 1.5
    await gauge.fresh()  # done
    assert gauge.total() == 0


async def test_failed_produce_releases_the_reservation(gauge):
    await gauge.fresh()
    batch = reqs("a", "r1")
    assert gauge.admit(batch, limit=1, site_limits={"a": 1}).ok
    gauge.settle(batch, produced=False)
    assert gauge.total() == 0 and gauge.site("a") == 0


async def test_a_duplicate_of_a_known_request_does_not_count_twice(gauge, db, clock):
    db.rows = {"r1"}
    db.pending = {"a": 1}
    await gauge.fresh()
    gauge.admit(reqs("a", "r1"), limit=10, site_limits={"a": 10})
    gauge.settle(reqs("a", "r1"), produced=True)
    clock.now += 1.5
    await gauge.fresh()
    assert gauge.total() == 1


async def test_one_read_per_interval_shared_by_concurrent_callers(gauge, db, clock):
    db.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(gauge.fresh()) for _ in range(50)]
    await asyncio.sleep(0)
    db.gate.set()
    await asyncio.gather(*waiters)
    assert db.calls == 1
    for _ in range(100):
        await gauge.fresh()
    assert db.calls == 1
    clock.now += 1.01
    await gauge.fresh()
    assert db.calls == 2


async def test_ids_accepted_during_a_read_stay_counted(gauge, db, clock):
    await gauge.fresh()
    clock.now += 2
    db.gate = asyncio.Event()
    reading = asyncio.ensure_future(gauge.fresh())
    while db.calls < 2:  # the read has started (and asked about the ids known then)
        await asyncio.sleep(0)
    batch = reqs("a", "late")
    assert gauge.admit(batch, limit=10, site_limits={"a": 10}).ok
    gauge.settle(batch, produced=True)
    db.rows.add("late")  # written, but the read did not ask about it
    db.gate.set()
    await reading
    assert gauge.total() == 1


async def test_database_down_keeps_the_last_figure_for_a_while_then_refuses(gauge, db, clock):
    db.pending = {"a": 4}
    await gauge.fresh()
    db.fail = True
    clock.now += 2
    await gauge.fresh()  # failed read: the 2 s old figure still serves
    assert gauge.total() == 4
    calls = db.calls
    for _ in range(20):
        await gauge.fresh()
    assert db.calls == calls  # no read per request while the database is down
    clock.now += 30
    with pytest.raises(QueueUnknown):
        await gauge.fresh()
    db.fail = False
    clock.now += 1
    await gauge.fresh()
    assert gauge.total() == 4


# --------------------------------------------------------------------------- producing


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.capacity = capacity
        self.closed = False

    def append(self, *, timestamp, key, value, headers):
        if self.closed or len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeKafka:
    """The aiokafka producer's batch API: every sent batch waits for the test to ack it."""

    def __init__(self, capacity: int = 1000, partitions: int = 4) -> None:
        self.capacity = capacity
        self.sent: list[tuple[int, FakeBatch, asyncio.Future]] = []
        self.partitions_asked = 0

        async def wait_on_metadata(topic):
            return None

        self.client = SimpleNamespace(
            _wait_on_metadata=wait_on_metadata,
            cluster=SimpleNamespace(partitions_for_topic=lambda topic: set(range(partitions))),
        )

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch, topic, *, partition):
        acked = asyncio.get_running_loop().create_future()
        self.sent.append((partition, batch, acked))
        return acked

    # Faust's producer: the test's partitioner is the key's last character
    def _ensure_producer(self):
        return self

    def key_partition(self, topic, key):
        self.partitions_asked += 1
        return SimpleNamespace(partition=int(key[-1:]) % 4)


def submission(*pairs: tuple[str, str]) -> list[dict]:
    requests, errors = check_items([good(0, request_id=r, site_id=s) for r, s in pairs], batch=True)
    assert errors == []
    return requests


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_submissions_of_one_loop_turn_share_one_batch_per_partition_and_wait_for_its_ack():
    kafka = FakeKafka()
    producer = RequestProducer("blog.requests", timeout=5, producer=lambda: kafka)
    first = producer.send(submission(("a", "site-1"), ("b", "site-2")))
    second = producer.send(submission(("c", "site-1")))
    await settle_loop()
    assert sorted(p for p, _, _ in kafka.sent) == [1, 2]  # one batch per partition, both submissions in them
    batches = {p: batch for p, batch, _ in kafka.sent}
    assert [decode("BlogRequest", v)["request_id"] for _, v in batches[1].records] == ["a", "c"]
    assert batches[1].records[0][0] == b"site-1" and all(b.closed for b in batches.values())
    acks = {p: acked for p, _, acked in kafka.sent}
    acks[1].set_result(None)
    await settle_loop()
    assert second.done() and not first.done()  # "a" is acked, but "b" (partition 2) is not yet
    acks[2].set_result(None)
    await settle_loop()
    assert first.done() and first.exception() is None


async def test_a_failed_batch_fails_only_the_submissions_in_it():
    kafka = FakeKafka()
    producer = RequestProducer("blog.requests", timeout=5, producer=lambda: kafka)
    ok = producer.send(submission(("a", "site-1")))
    failed = producer.send(submission(("b", "site-2"), ("c", "site-1")))
    await settle_loop()
    for partition, _, acked in kafka.sent:
        if partition == 2:
            acked.set_exception(ConnectionError("broker gone"))
        else:
            acked.set_result(None)
    await settle_loop()
    assert ok.exception() is None
    assert isinstance(failed.exception(), ConnectionError)


async def test_full_batches_are_split_and_the_partitioner_is_asked_once_per_key():
    kafka = FakeKafka(capacity=2)
    producer = RequestProducer("blog.requests", timeout=5, producer=lambda: kafka)
    done = producer.send(submission(*((f"r{i}", "site-1") for i in range(5))))
    await settle_loop()
    assert [len(batch.records) for _, batch, _ in kafka.sent] == [2, 2, 1]
    assert kafka.partitions_asked == 1
    for _, _, acked in kafka.sent[:2]:
        acked.set_result(None)
    await settle_loop()
    assert not done.done()  # its last record is not acked yet
    kafka.sent[2][2].set_result(None)
    await settle_loop()
    assert done.done() and done.exception() is None


async def test_no_ack_in_time_fails_the_submissions():
    kafka = FakeKafka()
    producer = RequestProducer("blog.requests", timeout=0.05, producer=lambda: kafka)
    done = producer.send(submission(("a", "site-1")))
    with pytest.raises(asyncio.TimeoutError):
        await done


# --------------------------------------------------------------------------- garbage collection in a burst


def test_burst_gc_holds_the_collector_off_only_while_a_burst_is_in_flight(clock):
    assert gc.isenabled()
    burst = BurstGC(high=3, low=1, max_seconds=2.0, clock=clock)
    try:
        burst.begin(), burst.begin()
        assert gc.isenabled()
        burst.begin()  # 3 in flight
        assert not gc.isenabled() and burst.paused
        burst.end()
        assert not gc.isenabled()  # 2 left
        burst.end()  # 1 left: the burst is over
        assert gc.isenabled() and not burst.paused
        burst.end()
        # a burst that lasts too long gets the collector back, and keeps it for a while
        for _ in range(3):
            burst.begin()
        assert not gc.isenabled()
        clock.now += 2.5
        burst.begin()
        assert gc.isenabled()
        for _ in range(10):
            burst.begin()
        assert gc.isenabled()
        clock.now += 2.5
        burst.begin()
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_only_submissions_in_an_unacked_batch_time_out():
    kafka = FakeKafka()
    producer = RequestProducer("blog.requests", timeout=0.1, producer=lambda: kafka)
    acked = producer.send(submission(("a", "site-1")))
    late = producer.send(submission(("b", "site-2")))
    await settle_loop()
    next(ack for partition, _, ack in kafka.sent if partition == 1).set_result(None)
    with pytest.raises(asyncio.TimeoutError):
        await late
    assert acked.done() and acked.exception() is None


# --------------------------------------------------------------------------- a produce that was not confirmed


@pytest.mark.parametrize("submission", [
    {"site_id": "shop-1", "topic": "Summer sandals"},
    {"requests": [{"site_id": "shop-1", "topic": "Summer sandals"}, good(7)]},
])
async def test_a_503_after_kafka_did_not_confirm_names_the_ids_to_send_again(monkeypatch, submission):
    # The broker acked after the deadline (or took part of a batch): the records may run. A request sent without a
    # request_id got one here; told only "retry with the same request ids", its client sends the body again, gets a
    # new id, and the site gets the article and the post twice. The answer must say which ids to send.
    from store.sites import Site
    from streams.api import intake

    class Admit:
        def is_fresh(self):
            return True

        def total(self):
            return 0

        def admit(self, requests, **limits):
            return Decision(True, "", 0, 10)

        def settle(self, requests, *, produced):
            pass

    async def sites(requests):
        return {"shop-1": Site("shop-1")}

    async def no_owners(ids):
        return {}

    async def late(requests, timeout):
        raise asyncio.TimeoutError("the broker did not acknowledge within 5 s")

    monkeypatch.setattr(intake, "gauge", Admit())
    monkeypatch.setattr(intake, "registered_sites", sites)
    monkeypatch.setattr(intake, "owner_lookup", SimpleNamespace(owners=no_owners))
    monkeypatch.setattr(intake, "produce", late)
    with pytest.raises(IntakeError) as refused:
        await intake.submit(body(submission))
    answer = refused.value
    assert answer.status == 503 and "Retry-After" in answer.headers
    ids = answer.body()["request_ids"]
    items = submission.get("requests", [submission])
    assert len(ids) == len(items) and ids[-1] == items[-1].get("request_id", ids[-1])
    assert all(isinstance(i, str) and i for i in ids)
    assert "request_ids" in answer.error and "same" in answer.error


# --------------------------------------------------------------------------- lanes: bulk requests counted apart


async def test_a_sites_backfill_never_fills_its_interactive_room(gauge, db, clock):
    """A site at its bulk limit still gets interactive requests in, and the other way round."""
    db.pending, db.bulk = {"a": 2}, {"a": 10}
    await gauge.fresh()
    limits = dict(limit=100, site_limits={"a": 3}, bulk_site_limits={"a": 10})
    no = gauge.admit(reqs("a", "b1", priority="bulk"), **limits)
    assert (no.ok, no.reason, no.lane, no.pending, no.limit) == (False, "site_queue_full", "bulk", 10, 10)
    assert gauge.admit(reqs("a", "i1"), **limits).ok  # 2 + 1 of max_queued 3
    no = gauge.admit(reqs("a", "i2"), **limits)
    assert (no.ok, no.lane) == (False, "interactive")
    db.bulk = {}
    clock.now += 1.5
    await gauge.fresh()
    assert gauge.admit(reqs("a", "b2", "b3", priority="bulk"), **limits).ok  # a full interactive room is no bar


async def test_bulk_requests_leave_the_interactive_reserve_of_the_queue_free(gauge, db):
    db.pending, db.bulk = {"a": 1}, {"b": 88}
    await gauge.fresh()
    limits = dict(limit=100, site_limits={"a": 100, "b": 100}, bulk_site_limits={"a": 100, "b": 100},
                  interactive_reserve=10)
    assert gauge.admit(reqs("b", "b1", priority="bulk"), **limits).ok  # 90 of the 90 bulk ones may reach
    no = gauge.admit(reqs("a", "b2", priority="bulk"), **limits)
    assert (no.ok, no.reason, no.lane, no.limit, no.room) == (False, "queue_full", "bulk", 90, 0)
    assert gauge.admit(reqs("a", *[f"i{n}" for n in range(10)]), **limits).ok  # the reserve: interactive ones
    no = gauge.admit(reqs("a", "i10"), **limits)
    assert (no.ok, no.reason, no.lane, no.limit) == (False, "queue_full", "interactive", 100)
    assert (gauge.total(), gauge.total("bulk"), gauge.figures()["bulk_pending"]) == (100, 89, 89)


async def test_a_mixed_submission_is_admitted_whole_or_not_at_all(gauge, db, clock):
    db.bulk = {"a": 4}
    await gauge.fresh()
    limits = dict(limit=10, site_limits={"a": 10}, bulk_site_limits={"a": 5})
    batch = reqs("a", "i1", "i2") + reqs("a", "b1", "b2", priority="bulk")
    no = gauge.admit(batch, **limits)
    assert (no.ok, no.lane, no.room) == (False, "bulk", 1)
    assert (gauge.total("interactive"), gauge.total("bulk")) == (0, 4)  # nothing of it reserved
    ok = batch[:3]
    assert gauge.admit(ok, **limits).ok
    assert (gauge.total("interactive"), gauge.total("bulk"), gauge.site("a", "bulk")) == (2, 5, 5)
    gauge.settle(ok, produced=True)  # accepted, not yet in Postgres: still counted, each in its lane
    assert (gauge.total("interactive"), gauge.total("bulk")) == (2, 5)
    db.rows |= {"i1", "i2", "b1"}
    db.pending, db.bulk = {"a": 2}, {"a": 5}
    clock.now += 1.5
    await gauge.fresh()
    assert (gauge.total("interactive"), gauge.total("bulk"), gauge.total()) == (2, 5, 7)  # once, not twice


LANE_STATE = st.fixed_dictionaries({
    "db": st.dictionaries(st.tuples(st.sampled_from(["interactive", "bulk"]), st.sampled_from("abc")),
                          st.integers(0, 12), max_size=6),
    "before": st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from([None, "interactive", "bulk"]),
                                 st.integers(1, 4), st.booleans()), max_size=5),
    "submission": st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from([None, "interactive", "bulk"])),
                           min_size=1, max_size=8),
    "limit": st.integers(1, 40), "reserve": st.integers(0, 10),
    "site_limit": st.integers(1, 12), "bulk_site_limit": st.integers(1, 12),
})


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(LANE_STATE)
def test_a_submission_is_admitted_exactly_when_it_fits_the_queue_and_each_sites_room_in_its_lane(state):
    """Whatever is pending, reserved or accepted in either lane: a submission is admitted exactly when the
    queue (both lanes) has room for it, leaves the interactive reserve free if it has bulk requests, and
    each site's requests of each lane fit that site's limit for the lane, counted from that lane alone."""
    db = FakeDb()
    for (lane, site), n in state["db"].items():
        (db.bulk if lane == "bulk" else db.pending)[site] = n
    gauge = PendingGauge(db.fetch, clock=FakeClock())
    asyncio.run(gauge.fresh())
    limits = dict(limit=state["limit"], site_limits=dict.fromkeys("abc", state["site_limit"]),
                  bulk_site_limits=dict.fromkeys("abc", state["bulk_site_limit"]), interactive_reserve=state["reserve"])
    count = dict(state["db"])  # (lane, site) -> pending, as the reference counts it
    serial = iter(range(10_000))

    def submission(items):
        return [{"request_id": f"r{next(serial)}", "site_id": site, **({"priority": p} if p else {})}
                for site, p in items]

    def reference(requests):
        wanted: dict = {}
        for r in requests:
            key = ("bulk" if r.get("priority") == "bulk" else "interactive", r["site_id"])
            wanted[key] = wanted.get(key, 0) + 1
        total = sum(count.values()) + len(requests)
        if total > state["limit"]:
            return False, wanted
        if any(lane == "bulk" for lane, _ in wanted) and total > state["limit"] - state["reserve"]:
            return False, wanted
        for (lane, site), k in wanted.items():
            if count.get((lane, site), 0) + k > state["bulk_site_limit" if lane == "bulk" else "site_limit"]:
                return False, wanted
        return True, wanted

    for site, priority, n, produced in state["before"]:
        requests = submission([(site, priority)] * n)
        expected, wanted = reference(requests)
        assert gauge.admit(requests, **limits).ok == expected
        if expected:
            gauge.settle(requests, produced=produced)
            if produced:
                for key, k in wanted.items():
                    count[key] = count.get(key, 0) + k
    requests = submission(state["submission"])
    expected, wanted = reference(requests)
    assert gauge.admit(requests, **limits).ok == expected
    for lane in ("interactive", "bulk"):
        for site in "abc":
            assert gauge.site(site, lane) == count.get((lane, site), 0) + (wanted.get((lane, site), 0) if expected else 0)
