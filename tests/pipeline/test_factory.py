"""The stage factory (streams/pipeline/factory.py): what happens to one event, whatever it holds.

No record may hold up its partition for good: a bad one is dead-lettered, a step that
keeps failing for a reason other than an outage ends its request FAILED after
MAX_STEP_ATTEMPTS tries, an outage is retried for as long as it lasts, and a record
reusing another site's request id touches nothing of that site.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from store.database import DatabaseError
from streams.contract import decode, decode_request, encode
from streams.pipeline import factory
from streams.pipeline.stage import RequestOfAnotherSite, StageFailed

NOW = 1_750_000_000_000
REQUEST = {"request_id": "req-1", "site_id": "shop-1", "topic": "Tea", "requested_at": NOW}
ARTICLE = {"title": "Tea", "slug": "tea", "excerpt": "", "body": "Tea.", "tags": [], "image_prompt": "tea",
           "image_alt": "tea"}


def event(value: bytes, key: bytes | None = b"shop-1", offset: int = 7) -> Any:
    message = SimpleNamespace(topic="t.blog.requests", partition=0, offset=offset, key=key, value=value)
    return SimpleNamespace(message=message, value=value, key=key)


@pytest.fixture
def outcomes(monkeypatch):
    seen = SimpleNamespace(failed=[], dead=[], sent=[], runs=[])

    async def send_failed(stage, request_id, site_id, error, attempts=0, *, status="FAILED", retry=0):
        seen.failed.append((request_id, status, error))
        seen.runs.append(retry)

    async def dead_letter(stage, event, err, *, mark_failed=True):
        seen.dead.append((err.reason, err.request_id if mark_failed else None))

    async def send_record(topic, site_id, name, value):
        encode(name, value)  # what the real one does first
        seen.sent.append((name, value))

    monkeypatch.setattr(factory, "send_failed", send_failed)
    monkeypatch.setattr(factory, "dead_letter", dead_letter)
    monkeypatch.setattr(factory, "send_record", send_record)
    return seen


def failing(exc: BaseException):
    async def step(record):
        raise exc

    return step


async def test_a_step_that_keeps_failing_ends_its_request_failed_after_a_few_tries(outcomes):
    data = encode("BlogRequest", REQUEST)
    for attempt in range(1, factory.MAX_STEP_ATTEMPTS):
        with pytest.raises(KeyError):
            await factory.run_stage_event("generate", event(data), decode_request, failing(KeyError("usage")), attempt=attempt)
    assert outcomes.failed == []
    await factory.run_stage_event("generate", event(data), decode_request, failing(KeyError("usage")),
                                  attempt=factory.MAX_STEP_ATTEMPTS)
    ((request_id, status, error),) = outcomes.failed
    assert (request_id, status) == ("req-1", "FAILED")
    assert f"{factory.MAX_STEP_ATTEMPTS} times: KeyError" in error and "blogstream retry req-1" in error


@pytest.mark.parametrize("raised", [
    StageFailed("image", "req-1", "shop-1", "Replicate refused the prompt"),
    KeyError("usage"),
])
async def test_a_failed_result_names_the_run_it_ends(outcomes, raised):
    # A retry's failure ends the retry's run (its slot, its row), not the run before it: the result carries the
    # run of the record that failed, for each way a step can fail.
    data = encode("BlogDraft", {"request": REQUEST | {"retry": 2}, "article": ARTICLE,
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "drafted_at": NOW})
    await factory.run_stage_event("image", event(data), lambda d: decode("BlogDraft", d), failing(raised),
                                  attempt=factory.MAX_STEP_ATTEMPTS)
    assert [status for _, status, _ in outcomes.failed] == ["FAILED"] and outcomes.runs == [2]


@pytest.mark.parametrize("outage", [
    ConnectionRefusedError("postgres"), asyncio.TimeoutError(), KafkaConnectionError("broker"),
    DatabaseError("cannot connect"), asyncpg.exceptions.CannotConnectNowError("starting up"),
    asyncpg.exceptions.ConnectionDoesNotExistError("lost"), asyncpg.exceptions.DeadlockDetectedError("deadlock"),
])
async def test_an_outage_is_retried_for_as_long_as_it_lasts(outcomes, outage):
    with pytest.raises(type(outage)):
        await factory.run_stage_event("generate", event(encode("BlogRequest", REQUEST)), decode_request,
                                      failing(outage), attempt=1000)
    assert outcomes.failed == [] and outcomes.dead == []


def test_what_counts_as_an_outage():
    assert factory.is_transient(OSError()) and factory.is_transient(KafkaConnectionError())
    assert not factory.is_transient(MessageSizeTooLargeError())  # will never fit: not an outage
    assert not factory.is_transient(ValueError()) and not factory.is_transient(asyncpg.DataError("x"))
    assert factory.is_data_error(asyncpg.exceptions.CharacterNotInRepertoireError("0x00"))
    assert factory.is_data_error(asyncpg.exceptions.CheckViolationError("check"))
    assert not factory.is_data_error(asyncpg.exceptions.UndefinedColumnError("title"))


async def test_tries_are_counted_per_event_and_forgotten_when_it_is_done(outcomes):
    data = encode("BlogRequest", REQUEST)
    calls = []

    async def flaky(record):
        calls.append(record["request_id"])
        if len(calls) < 3:
            raise KeyError("transient bug")
        return None

    for _ in range(2):
        with pytest.raises(KeyError):
            await factory.run_counted("generate", event(data, offset=41), decode_request, flaky)
    assert factory._step_failures[("t.blog.requests", 0, 41)] == 2
    await factory.run_counted("generate", event(data, offset=41), decode_request, flaky)
    assert ("t.blog.requests", 0, 41) not in factory._step_failures and outcomes.failed == []

    for _ in range(factory.MAX_STEP_ATTEMPTS - 1):
        with pytest.raises(ValueError):
            await factory.run_counted("generate", event(data, offset=42), decode_request, failing(ValueError("bug")))
    await factory.run_counted("generate", event(data, offset=42), decode_request, failing(ValueError("bug")))
    assert len(outcomes.failed) == 1 and ("t.blog.requests", 0, 42) not in factory._step_failures


async def test_a_record_of_another_sites_request_id_is_dead_lettered_without_touching_that_request(outcomes):
    await factory.run_stage_event("generate", event(encode("BlogRequest", REQUEST)), decode_request,
                                  failing(RequestOfAnotherSite("generate", "req-1", "shop-1")))
    ((reason, marked),) = outcomes.dead
    assert "already used by another site" in reason and marked is None  # no FAILED row: the row is not ours
    assert outcomes.failed == []


async def test_a_key_that_is_not_the_site_is_dead_lettered(outcomes):
    async def never(record):
        raise AssertionError("the step must not run")

    await factory.run_stage_event("generate", event(encode("BlogRequest", REQUEST), key=b"shop-2"), decode_request, never)
    ((reason, marked),) = outcomes.dead
    assert "the message key shop-2 is not the request's site_id shop-1" in reason and marked == "req-1"
    await factory.run_stage_event("generate", event(encode("BlogRequest", REQUEST), key=None), decode_request,
                                  failing(StageFailed("generate", "req-1", "shop-1", "no key is fine")))
    assert len(outcomes.dead) == 1 and len(outcomes.failed) == 1


async def test_output_that_breaks_the_contract_fails_the_request_at_once(outcomes):
    async def step(record):
        return "topic", "BlogResult", {"request_id": "req-1", "site_id": "shop-1", "status": "DONE",
                                       "stage": "publish", "post_url": "https://x/\x00", "finished_at": NOW}

    await factory.run_stage_event("publish", event(encode("BlogRequest", REQUEST)), decode_request, step)
    ((_, status, error),) = outcomes.failed
    assert status == "FAILED" and "post_url: must not contain NUL" in error and outcomes.sent == []


async def test_bad_bytes_are_dead_lettered_with_the_ids_that_can_be_read(outcomes):
    await factory.run_stage_event("generate", event(b'{"request_id": "req-5", "site_id": "shop-1", "topic": "\\ud800"}'),
                                  decode_request, failing(AssertionError()))
    ((reason, marked),) = outcomes.dead
    assert "topic" in reason and "surrogate" in reason and marked == "req-5"


async def test_a_failed_result_is_always_encodable_whatever_the_error_quotes(monkeypatch):
    sent = []

    class Topic:
        async def send(self, *, key, value, headers=None):
            sent.append((key, value, headers))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    monkeypatch.setattr(factory, "results_topic", Topic())
    await factory.send_failed("publish", "req-1", "shop-1", "Wix said: \ud800\x00" + "x" * 5000)
    ((_, value, _),) = sent
    error = decode("BlogResult", value)["error"]
    assert len(error) == 2000 and "\x00" not in error and "\ufffd" in error


def test_the_owner_cache_remembers_answers_and_forgets_the_oldest_first():
    owners = factory.OwnerCache(size=2)
    owners.put("req-1", "shop-1")
    owners.put("req-2", None)  # no answer (no row): nothing to remember
    owners.put("req-3", "shop-3")
    assert (owners.get("req-1"), owners.get("req-2"), owners.get("req-3")) == ("shop-1", None, "shop-3")
    owners.put("req-1", "shop-1")  # asked again: it becomes the newest
    owners.put("req-4", "shop-4")
    assert (owners.get("req-1"), owners.get("req-3"), owners.get("req-4")) == ("shop-1", None, "shop-4")
