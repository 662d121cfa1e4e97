"""ImageMaker against the Replicate simulator (the real SDK over real HTTP)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.errors import MalformedOutput, ProviderError, ProviderUnavailable, RateLimited, RejectedRequest
from connectors.replicate_images import GONE, CoverImage, ImageMaker, PredictionState, _parse_timestamp_ms

from .conftest import ANY_JSON, REPLICATE_TOKEN, Simulator, answering_in_turn, broken_at, outcomes_in_turn

PROMPT = "A watercolor of a worm bin on a sunny balcony, no text"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.asyncio
async def test_make_cover_returns_a_downloadable_png(images: ImageMaker, sim: Simulator) -> None:
    before_ms = int(time.time() * 1000)
    cover = await images.make_cover(PROMPT, request_id="req-1")
    after_ms = int(time.time() * 1000)

    assert cover.prediction_id
    assert before_ms - 1000 <= cover.created_at_ms <= after_ms + 1000
    async with httpx.AsyncClient() as http:
        response = await http.get(cover.url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)

    ledger = sim.ledger()["replicate"]
    # Synchronous mode: one POST, no polling.
    assert ledger["predictions_created"] == 1 and ledger["sync_requests"] == 1
    assert ledger["current_requests_in_window_other"] == 0


@pytest.mark.asyncio
async def test_polls_when_the_sync_wait_ends_first(replicate_args: dict[str, Any], sim: Simulator) -> None:
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": 1.6}})
    async with ImageMaker(**replicate_args, sync_wait_s=1, first_poll_s=0.25, max_poll_s=0.5) as maker:
        cover = await maker.make_cover(PROMPT, request_id="req-2")
    assert cover.url.endswith(".png")
    polls = sim.ledger()["replicate"]["current_requests_in_window_other"]
    assert 1 <= polls <= 3  # few, growing gaps


@pytest.mark.asyncio
async def test_gives_up_and_cancels_after_the_timeout(replicate_args: dict[str, Any], sim: Simulator) -> None:
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": 5.0}})
    async with ImageMaker(**{**replicate_args, "timeout": 1.5}, first_poll_s=0.2, max_poll_s=0.4) as maker:
        with pytest.raises(ProviderUnavailable) as info:
            await maker.make_cover(PROMPT, request_id="req-3")
    assert "req-3" in info.value.message and "canceled" in info.value.message
    assert sim.ledger()["replicate"]["predictions_canceled"] == 1


@pytest.mark.asyncio
async def test_429_maps_to_rate_limited(images: ImageMaker, sim: Simulator) -> None:
    sim.configure({"replicate": {"create_rpm": 1}})
    await images.make_cover(PROMPT, request_id="req-4")
    with pytest.raises(RateLimited) as info:
        await images.make_cover(PROMPT, request_id="req-5")
    exc = info.value
    assert exc.provider == "replicate" and exc.status == 429 and exc.retryable
    assert exc.retry_after is not None and 1 <= exc.retry_after <= 60
    assert "throttled" in exc.message
    assert REPLICATE_TOKEN not in str(exc) and REPLICATE_TOKEN not in repr(exc)
    # The SDK never retries the POST that creates (and pays for) a prediction.
    assert sim.ledger()["replicate"]["calls"] == 2


@pytest.mark.asyncio
async def test_failed_prediction_is_retryable_with_its_error(images: ImageMaker, sim: Simulator) -> None:
    sim.configure({"replicate": {"fail_rate": 1.0}})
    with pytest.raises(ProviderUnavailable) as info:
        await images.make_cover(PROMPT, request_id="req-6")
    assert info.value.retryable and "NSFW" in info.value.message and "req-6" in info.value.message


@pytest.mark.asyncio
async def test_server_errors_map_to_unavailable(images: ImageMaker, sim: Simulator) -> None:
    sim.configure({"replicate": {"error_rate": 1.0}})
    with pytest.raises(ProviderUnavailable) as info:
        await images.make_cover(PROMPT, request_id="req-7")
    assert info.value.status in (500, 503) and info.value.retryable
    assert REPLICATE_TOKEN not in str(info.value)


@pytest.mark.asyncio
async def test_unknown_model_is_rejected_with_advice(replicate_args: dict[str, Any]) -> None:
    bad = {**replicate_args, "base_url": replicate_args["base_url"] + "/nowhere"}
    async with ImageMaker(**bad) as maker:
        with pytest.raises(RejectedRequest) as info:
            await maker.make_cover(PROMPT, request_id="req-8")
    assert info.value.status == 404 and "BLOGSTREAM_REPLICATE_MODEL" in info.value.message


@pytest.mark.asyncio
async def test_empty_prompt_is_rejected_without_a_call(images: ImageMaker, sim: Simulator) -> None:
    with pytest.raises(RejectedRequest):
        await images.make_cover("   ", request_id="req-9")
    assert sim.ledger()["replicate"]["calls"] == 0


def test_model_must_be_owner_slash_name(replicate_args: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="owner/name"):
        ImageMaker(**{**replicate_args, "model": "black-forest-labs/flux-schnell:abc123"})


def test_timestamps_with_nanoseconds() -> None:
    assert _parse_timestamp_ms("2024-05-01T12:00:00.123456789Z") == 1714564800123
    assert _parse_timestamp_ms("2024-05-01T12:00:00Z") == 1714564800000
    assert _parse_timestamp_ms("2024-05-01T12:00:00.5+00:00") == 1714564800500
    assert _parse_timestamp_ms(None) is None and _parse_timestamp_ms("yesterday") is None


def test_malformed_output_is_retryable() -> None:
    assert MalformedOutput("replicate", "x").retryable


# --------------------------------------------------------------------------- one call at a time (metered by the caller)


@pytest.mark.asyncio
async def test_each_step_is_one_call_and_the_state_is_plain_data(replicate_args: dict[str, Any], sim: Simulator) -> None:
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": 1.5}})
    async with ImageMaker(**replicate_args, sync_wait_s=1) as maker:
        started = await maker.create_prediction(PROMPT, request_id="req-10")
        assert started.running and started.url is None and started.created_at_ms
        assert PredictionState.from_dict(started.as_dict()) == started  # what the effect ledger stores
        polled = await maker.get_prediction(started.id)
        canceled = await maker.cancel_prediction(started.id)
    assert polled.id == started.id and canceled.status == "canceled" and not canceled.running
    endpoints = sim.ledger()["replicate"]["endpoints"]
    assert [endpoints[e]["calls"] for e in ("create", "get", "cancel")] == [1, 1, 1]
    with pytest.raises(ProviderUnavailable, match="canceled"):
        maker.cover_of(canceled, request_id="req-10")


@pytest.mark.asyncio
async def test_a_failed_poll_is_one_call_the_sdk_does_not_retry_it(images: ImageMaker, sim: Simulator) -> None:
    done = await images.create_prediction(PROMPT, request_id="req-11")
    assert done.usable and images.cover_of(done, request_id="req-11").url == done.url
    sim.configure({"replicate": {"other_error_rate": 1.0, "error_statuses": [503]}})
    with pytest.raises(ProviderUnavailable) as info:
        await images.get_prediction(done.id)
    assert info.value.status == 503 and info.value.retryable
    # The SDK's RetryTransport would have sent it ten times, each a poll without a permit.
    assert sim.ledger()["replicate"]["endpoints"]["get"]["calls"] == 1
    sim.configure({"replicate": {"other_error_rate": 0.0, "error_statuses": [500, 503]}})


@pytest.mark.asyncio
async def test_an_unknown_prediction_is_gone_and_an_expired_image_is_not_usable(images: ImageMaker, sim: Simulator) -> None:
    gone = await images.get_prediction("nosuchprediction")
    assert gone.status == GONE and not gone.running and not gone.usable
    assert (await images.cancel_prediction("nosuchprediction")).status == GONE
    done = await images.create_prediction(PROMPT, request_id="req-12")
    sim.configure({"replicate": {"output_ttl_seconds": 0}})
    expired = await images.get_prediction(done.id)
    assert expired.status == "succeeded" and expired.url is None and not expired.usable
    with pytest.raises(MalformedOutput):
        images.cover_of(expired, request_id="req-12")


# --------------------------------------------------------------------------- hostile answers

_PREDICTION = {
    "id": "p1", "model": "black-forest-labs/flux-schnell", "version": "v1", "status": "succeeded",
    "input": {"prompt": "a cat"}, "output": ["https://replicate.delivery/p1/out-0.png"], "error": None, "logs": "",
    "metrics": {"predict_time": 1.25}, "created_at": "2026-12-06T12:00:00.123456789Z",
    "completed_at": "2026-12-06T12:00:02Z",
    "urls": {"get": "https://api.replicate.com/v1/predictions/p1", "cancel": "https://api.replicate.com/v1/predictions/p1/cancel"},
}
_PREDICTION_PATHS = [()] + [(key,) for key in _PREDICTION] + [("output", 0), ("metrics", "predict_time")]
_STEPS = {
    "create": lambda images: images.create_prediction("a cat", request_id="r1"),
    "get": lambda images: images.get_prediction("p1"),
    "cancel": lambda images: images.cancel_prediction("p1"),
}


@st.composite
def _hostile_answer(draw: st.DrawFn) -> tuple[str, int, bytes]:
    step = draw(st.sampled_from(sorted(_STEPS)))
    status = draw(st.sampled_from([200, 200, 200, 201, 400, 404, 422, 429, 500]))
    if draw(st.booleans()):
        return step, status, draw(st.binary(max_size=30) | st.sampled_from([b"Infinity", b'{"id": NaN}']))
    path, value = draw(st.sampled_from(_PREDICTION_PATHS)), draw(ANY_JSON | st.sampled_from([float("inf"), 10**400]))
    return step, status, json.dumps(broken_at(_PREDICTION, path, value)).encode()


@settings(max_examples=60, deadline=None)
@given(answers=st.lists(_hostile_answer(), min_size=1, max_size=6))
def test_any_answer_is_a_prediction_state_or_a_provider_error(answers: list) -> None:
    """Whatever Replicate answers, each call gives a PredictionState of plain values that stores as JSON
    (no NaN or infinity), and `cover_of` turns it into a cover or a ProviderError; nothing else escapes."""
    async def run() -> list[Any]:
        queue: list[tuple[int, bytes]] = []
        runner, url = await answering_in_turn(queue)
        images = ImageMaker(base_url=url, api_token=REPLICATE_TOKEN, model="black-forest-labs/flux-schnell",
                            timeout=5.0, max_connections=2)
        outcomes: list[Any] = []
        try:
            for step, status, body in answers:
                queue[:] = [(status, body)]
                try:
                    state = await _STEPS[step](images)
                    json.dumps(state.as_dict(), allow_nan=False)  # how covers.py keeps it
                    try:
                        outcomes.append((state, images.cover_of(state, request_id="r1")))
                    except ProviderError as exc:
                        outcomes.append((state, exc))
                except ProviderError as exc:
                    outcomes.append((None, exc))
        finally:
            await images.aclose()
            await runner.cleanup()
        return outcomes

    for state, cover in asyncio.run(run()):
        if state is not None:
            assert isinstance(state.id, str) and isinstance(state.status, str)
            assert state.url is None or state.url.startswith(("http://", "https://"))
            assert all(v is None or type(v) is int for v in (state.created_at_ms, state.completed_at_ms))
            assert state.predict_time is None or (math.isfinite(state.predict_time) and state.predict_time >= 0)
        assert isinstance(cover, ProviderError) or (isinstance(cover, CoverImage) and type(cover.created_at_ms) is int)


_LISTED = {**_PREDICTION, "input": {"prompt": "a cat", "aspect_ratio": "16:9", "output_format": "png"}}


@st.composite
def _hostile_list(draw: st.DrawFn) -> tuple[int, bytes]:
    status = draw(st.sampled_from([200, 200, 200, 400, 404, 429, 500]))
    if draw(st.booleans()):
        return status, draw(st.binary(max_size=30))
    page = {"next": None, "previous": None, "results": [_LISTED]}
    path = draw(st.sampled_from([(), ("results",), ("results", 0)] + [("results", 0) + p for p in _PREDICTION_PATHS[1:]]))
    return status, json.dumps(broken_at(page, path, draw(ANY_JSON))).encode()


def _finding(pages: list[tuple[int, bytes]], since_ms: int = 0) -> list[Any]:
    """`find_prediction` of a cover's prompt against each (status, body) list answer in turn."""
    def find(images: ImageMaker) -> Any:
        return images.find_prediction("a cat", since_ms=since_ms)

    return outcomes_in_turn(lambda url: ImageMaker(base_url=url, api_token=REPLICATE_TOKEN,
                                                   model="black-forest-labs/flux-schnell", timeout=5.0,
                                                   max_connections=2),
                            [(find, [page]) for page in pages])


@settings(max_examples=60, deadline=None)
@given(answers=st.lists(_hostile_list(), min_size=1, max_size=4))
def test_any_list_answer_finds_a_prediction_state_nothing_or_a_provider_error(answers: list) -> None:
    """The look-up of a create whose answer was lost: whatever the list answers, a PredictionState of plain
    values, None, or a ProviderError."""
    for outcome in _finding(answers):
        assert outcome is None or isinstance(outcome, ProviderError) or isinstance(outcome.id, str)
        if outcome is not None and not isinstance(outcome, ProviderError):
            json.dumps(outcome.as_dict(), allow_nan=False)


def test_a_lost_create_is_found_only_when_one_listed_prediction_is_exactly_it() -> None:
    other_request = {**_LISTED, "id": "p2"}  # the same prompt, sent by another request meanwhile
    older = {**_LISTED, "id": "p3", "created_at": "2026-12-06T11:00:00Z"}
    other_model = {**_LISTED, "id": "p4", "model": "someone/else"}
    pages = [[_LISTED], [_LISTED, other_request], [older], [other_model, older], [{**_LISTED, "input": {"prompt": "a cat"}}]]

    found = _finding([(200, json.dumps({"next": None, "previous": None, "results": results}).encode())
                      for results in pages], since_ms=1_796_558_000_000)  # 2026-12-06 11:53
    assert found[0] is not None and found[0].id == "p1" and found[0].usable
    assert found[1:] == [None, None, None, None]  # two candidates, too old, another model, other input
