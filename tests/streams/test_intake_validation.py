"""The intake's decisions without a worker: parsing, validation, auth, the pending gauge."""
from __future__ import annotations

import asyncio
import json

import pytest

from streams.intake import (
    Decision,
    IntakeError,
    PendingGauge,
    PendingSnapshot,
    QueueUnknown,
    bearer_ok,
    check_items,
    invalid,
    parse_body,
    rejection,
    unknown_site_errors,
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
    requests, errors = check_items([{"site_id": "shop-1", "topic": "Hello"}], batch=False, now_ms=1234)
    assert errors == []
    (request,) = requests
    assert len(request["request_id"]) == 32 and request["requested_at"] == 1234


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
        return PendingSnapshot(dict(self.pending), {i for i in ids if i in self.rows})


def reqs(site: str, *ids: str):
    return [{"request_id": i, "site_id": site} for i in ids]


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
