"""The sink (streams/pipeline/sink.py) without Kafka or Postgres: no event lost, none holds up another.

A batch is acked only after it is stored; an outage (Postgres down, at start or
later) is waited out; a row Postgres refuses for its values is found, dead-lettered
and its request marked FAILED while the rest of its batch is stored; events that
cannot become rows, and results of another site's request id, go to the DLQ.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from store.database import DatabaseError
from store.outcomes import OutcomeWrite
from streams.app import drafts_topic, requests_topic, results_topic
from streams.contract import encode
from streams.pipeline import factory, sink

NOW = 1_750_000_000_000
ARTICLE = {"title": "T", "slug": "t", "excerpt": "", "body": "B", "tags": [], "image_prompt": "", "image_alt": ""}


def request(n: int, site: str = "shop-1", **fields: Any) -> dict[str, Any]:
    return {"request_id": f"req-{n}", "site_id": site, "topic": f"Topic {n}", "requested_at": NOW, **fields}


def event(topic: Any, value: bytes, key: bytes = b"shop-1", offset: int = 0) -> Any:
    message = SimpleNamespace(topic=topic.get_topic_name(), partition=0, offset=offset, key=key, value=value)
    return SimpleNamespace(message=message, value=value, key=key)


def requested(n: int, **fields: Any) -> Any:
    return event(requests_topic, encode("BlogRequest", request(n, **fields)), offset=n)


def drafted(n: int, title: str = "T") -> Any:
    value = {"request": request(n), "article": ARTICLE | {"title": title}, "usage": {"prompt_tokens": 1,
             "completion_tokens": 2}, "attempts": 1, "drafted_at": NOW}
    return event(drafts_topic, encode("BlogDraft", value), offset=100 + n)


def result(n: int, site: str = "shop-1", finished_at: int = NOW, status: str = "DONE") -> Any:
    value = {"request_id": f"req-{n}", "site_id": site, "status": status, "stage": "publish", "finished_at": finished_at}
    return event(results_topic, encode("BlogResult", value), key=site.encode(), offset=200 + n)


class FakeDb:
    """Refuses any batch holding a "poison" title (like Postgres refuses NUL); knows which site owns an id."""

    def __init__(self, owners: dict[str, str] | None = None, down: int = 0) -> None:
        self.owners = dict(owners or {})
        self.down = down
        self.calls = 0
        self.rows: list[Any] = []
        self.rejected: list[tuple[str, str, str]] = []

    async def store_outcomes(self, rows):
        self.calls += 1
        if self.down:
            self.down -= 1
            raise ConnectionRefusedError("postgres is restarting")
        if any(row.title == "poison" for row in rows):
            raise asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')
        foreign = set()
        for row in rows:
            owner = self.owners.setdefault(row.request_id, row.site_id)
            if owner != row.site_id:
                foreign.add((row.request_id, row.site_id))
            else:
                self.rows.append(row)
        return OutcomeWrite(len(rows) - len(foreign), frozenset(foreign))

    async def record_rejected(self, request_id, site_id, error):
        self.rejected.append((request_id, site_id, error))
        return True


class FakeDeps:
    def __init__(self, db: FakeDb, not_ready: int = 0) -> None:
        self.db, self.not_ready = db, not_ready

    async def ready(self):
        if self.not_ready:
            self.not_ready -= 1
            raise DatabaseError("cannot connect to postgresql://blogstream:***@127.0.0.1/blogstream")
        return self


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, *, key, value, headers):
        self.sent.append({"key": key, "value": value, **{k: v.decode() for k, v in headers.items()}})
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeBudgets:
    def __init__(self) -> None:
        self.released: list[tuple[str, str]] = []

    async def release_slot(self, site_id, request_id):
        self.released.append((site_id, request_id))


@pytest.fixture
def wired(monkeypatch):
    def wire(db: FakeDb, not_ready: int = 0):
        deps, dlq, budgets = FakeDeps(db, not_ready), FakeTopic(), FakeBudgets()
        monkeypatch.setattr(sink, "deps", deps)
        monkeypatch.setattr(factory, "deps", deps)
        monkeypatch.setattr(factory, "dlq_topic", dlq)
        monkeypatch.setattr(sink, "budgets", budgets)
        monkeypatch.setattr(sink, "FIRST_RETRY_DELAY", 0.001)
        return SimpleNamespace(db=db, dlq=dlq, budgets=budgets)

    return wire


async def test_a_row_postgres_refuses_is_dead_lettered_and_the_rest_of_its_batch_is_stored(wired):
    w = wired(FakeDb())
    batch = [requested(1), drafted(1), drafted(2, title="poison"), requested(3), result(1)]
    await sink.store_batch(batch)

    assert sorted((r.request_id, r.stage) for r in w.db.rows) == [
        ("req-1", "drafted"), ("req-1", "published"), ("req-1", "requested"), ("req-2", "failed"), ("req-3", "requested")]
    (dead,) = w.dlq.sent
    assert dead["value"] == batch[2].value and dead["blogstream-stage"] == "sink"
    assert "Postgres refused it: CharacterNotInRepertoireError" in dead["blogstream-error"]
    (failed,) = [r for r in w.db.rows if r.status == "FAILED"]
    assert "blog.dlq" in failed.error and "blogstream retry req-2" in failed.error
    assert sorted(w.budgets.released) == [("shop-1", "req-1"), ("shop-1", "req-2")]
    assert w.db.rejected == []  # the FAILED mark is the request's own event: not an insert-only rejection


async def test_an_outage_is_waited_out_and_nothing_is_dropped(wired):
    w = wired(FakeDb(down=3), not_ready=2)  # Postgres down when the worker starts, then restarting
    await sink.store_batch([requested(1), requested(2)])
    assert [r.request_id for r in w.db.rows] == ["req-1", "req-2"] and w.dlq.sent == []
    assert w.db.calls == 4


async def test_an_unknown_failure_is_retried_not_dead_lettered(wired):
    class Broken(FakeDb):
        async def store_outcomes(self, rows):
            self.calls += 1
            if self.calls < 3:
                raise asyncpg.exceptions.UndefinedColumnError('column "title" does not exist')  # a bad deploy
            return await super().store_outcomes(rows)

    w = wired(Broken())
    await sink.store_batch([requested(1)])
    assert [r.request_id for r in w.db.rows] == ["req-1"] and w.dlq.sent == []


async def test_another_sites_events_write_nothing_and_results_are_dead_lettered_here(wired):
    w = wired(FakeDb(owners={"req-1": "shop-1"}))
    stolen_request = event(requests_topic, encode("BlogRequest", request(1, site="shop-2")), key=b"shop-2")
    stolen_result = result(1, site="shop-2")
    await sink.store_batch([stolen_request, stolen_result, result(2)])

    assert [(r.request_id, r.site_id) for r in w.db.rows] == [("req-2", "shop-1")]
    (dead,) = w.dlq.sent  # the request is the generate stage's to dead-letter, the result is ours
    assert dead["value"] == stolen_result.value and "belongs to another site" in dead["blogstream-error"]
    assert w.db.rejected == [] and w.budgets.released == [("shop-1", "req-2")]


async def test_events_that_cannot_be_rows_are_dead_lettered_and_marked_failed_only_if_new(wired):
    w = wired(FakeDb())
    far_future = result(1, finished_at=2**62)  # a datetime cannot hold it: it once crashed the agent
    garbage_result = event(results_topic, b"\x00garbage", offset=300)
    garbage_request = event(requests_topic, b'{"request_id": "req-9", "site_id": "shop-1"}', offset=301)
    wrong_key = result(3)
    wrong_key.message.key = b"shop-9"
    await sink.store_batch([far_future, garbage_result, garbage_request, wrong_key, requested(2)])

    assert [r.request_id for r in w.db.rows] == ["req-2"]
    dead = {d["value"]: d["blogstream-error"] for d in w.dlq.sent}
    assert set(dead) == {far_future.value, garbage_result.value, wrong_key.value}  # the request is generate's
    assert "one day from now" in dead[far_future.value]
    assert "is not the request's site_id shop-1" in dead[wrong_key.value]
    assert [(i, s) for i, s, _ in w.db.rejected] == [("req-1", "shop-1"), ("req-3", "shop-1")]


class FakeStream:
    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches, self.acked = batches, []

    async def noack_take(self, n, within):
        for batch in self.batches:
            yield batch

    async def ack(self, event):
        self.acked.append(event)


async def test_a_batch_is_acked_only_after_it_is_stored(wired, monkeypatch):
    wired(FakeDb())
    ok = [requested(1), requested(2)]
    stream = FakeStream([ok])
    await sink.record_outcomes.fun(stream)
    assert stream.acked == ok

    async def crash(events):
        raise RuntimeError("the worker is going down")

    monkeypatch.setattr(sink, "store_batch", crash)
    stream = FakeStream([[requested(3)]])
    with pytest.raises(RuntimeError):
        await sink.record_outcomes.fun(stream)
    assert stream.acked == []  # read again after the restart, not lost
