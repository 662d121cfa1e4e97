"""A lost answer found again: ArticleWriter stores each completion under its request id and lists it back.

Against the OpenAI simulator (the real SDK over real HTTP): a call done in full whose answer was cut off on the
way back is found by `find_stored_article`, with the cost of that call (its completion's id and usage);
nothing is stored or listed when storing is off; a server without the list (an OpenAI-compatible one) or a
completion not listed yet finds nothing, so the call is made again rather than the request lost.
"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.errors import ProviderError, ProviderUnavailable
from connectors.openai_writer import STORED_REQUEST_KEY, ArticleWriter

from .conftest import ANY_JSON, Simulator, answering_in_turn, broken_at, outcomes_in_turn
from .test_openai_writer import REQUEST


@pytest.mark.asyncio
async def test_an_answer_cut_off_on_the_way_back_is_found_among_the_stored_completions(
    openai_args: dict[str, Any], sim: Simulator
) -> None:
    async with ArticleWriter(**openai_args, store_completions=True) as writer:
        assert await writer.find_stored_article(REQUEST, request_id="req-1") is None   # nothing written yet
        await writer.write_article(REQUEST, site_id="site-a", request_id="req-2")      # another request's
        sim.configure({"openai": {"cut_rate": 1.0}})
        with pytest.raises(ProviderUnavailable):
            await writer.write_article(REQUEST, site_id="site-a", request_id="req-1")
        sim.configure({"openai": {"cut_rate": 0.0}})
        found = await writer.find_stored_article(REQUEST, request_id="req-1")
    ledger = sim.ledger()["openai"]
    assert found is not None and found.from_store and found.article["title"]
    stored = ledger["stored_completions"]
    assert ledger["completions"] == 2 and stored["stored"] == 2   # written (and billed) once each, both kept
    assert found.billed is not None and found.billed.call_id.startswith("chatcmpl-")
    assert found.usage.completion_tokens > 0   # the lost call's cost, to be recorded once under its id


@pytest.mark.asyncio
async def test_a_completion_not_listed_yet_is_not_found(openai_args: dict[str, Any], sim: Simulator) -> None:
    sim.configure({"openai": {"stored_lag_seconds": 3600}})
    async with ArticleWriter(**openai_args, store_completions=True) as writer:
        await writer.write_article(REQUEST, site_id="site-a", request_id="req-1")
        assert await writer.find_stored_article(REQUEST, request_id="req-1") is None


@pytest.mark.asyncio
async def test_nothing_is_stored_or_listed_when_storing_is_off(openai_args: dict[str, Any], sim: Simulator) -> None:
    async with ArticleWriter(**openai_args) as writer:
        await writer.write_article(REQUEST, site_id="site-a", request_id="req-1")
        assert await writer.find_stored_article(REQUEST, request_id="req-1") is None
    assert sim.ledger()["openai"]["stored_completions"] == {"stored": 0, "reads": 0}


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [404, 403, 400])
async def test_a_list_not_there_or_not_allowed_finds_nothing(openai_args: dict[str, Any], status: int,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """An OpenAI-compatible server without the list, a key without the right to read it: the article is written
    again (as before there was a look-up), the request is not failed for it."""
    body = b'{"error": {"message": "You have insufficient permissions", "type": "invalid_request_error"}}'
    runner, url = await answering_in_turn([(status, body)])
    try:
        async with ArticleWriter(**{**openai_args, "base_url": f"{url}/v1"}, store_completions=True) as writer:
            assert await writer.find_stored_article(REQUEST, request_id="req-1") is None
    finally:
        await runner.cleanup()
    assert "req-1" in caplog.text and str(status) in caplog.text


@pytest.mark.asyncio
async def test_only_a_complete_answer_of_this_request_counts(openai_args: dict[str, Any]) -> None:
    def listed(*items: dict) -> tuple[int, bytes]:
        import json

        return 200, json.dumps({"object": "list", "data": list(items), "first_id": None, "last_id": None,
                                "has_more": False}).encode()

    def completion(request_id: str, finish: str, content: str) -> dict:
        return {"id": f"chatcmpl-{request_id}-{finish}", "object": "chat.completion", "created": 1,
                "model": "gpt-4o-mini", "metadata": {STORED_REQUEST_KEY: request_id},
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}

    article = ('{"title": "T", "slug": "t", "excerpt": "E", "body": "B", "tags": [], "image_prompt": "p", '
               '"image_alt": "a"}')
    runner, url = await answering_in_turn([
        listed(completion("req-1", "length", article[:30]), completion("other", "stop", article)),
        listed(completion("req-1", "length", article[:30]), completion("req-1", "stop", article)),
    ])
    try:
        async with ArticleWriter(**{**openai_args, "base_url": f"{url}/v1"}, store_completions=True) as writer:
            assert await writer.find_stored_article(REQUEST, request_id="req-1") is None   # cut off; another's
            found = await writer.find_stored_article(REQUEST, request_id="req-1")
    finally:
        await runner.cleanup()
    assert found is not None and found.billed.call_id == "chatcmpl-req-1-stop"


_ARTICLE = ('{"title": "T", "slug": "t", "excerpt": "E", "body": "B", "tags": [], "image_prompt": "p", '
            '"image_alt": "a"}')
_GOOD_PAGE = {"object": "list", "first_id": "c", "last_id": "c", "has_more": False, "data": [{
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
    "metadata": {STORED_REQUEST_KEY: "req-1"},
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": _ARTICLE}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}]}


def _hostile_page():
    import json

    from .conftest import paths_in

    whole = st.builds(lambda value: json.dumps(value).encode(), ANY_JSON)
    broken = st.builds(lambda path, value: json.dumps(broken_at(_GOOD_PAGE, path, value)).encode(),
                       st.sampled_from(paths_in(_GOOD_PAGE)), ANY_JSON)
    return st.tuples(st.sampled_from([200, 200, 200, 400, 401, 403, 404, 409, 429, 500, 502, 503]),
                     whole | broken | st.just(b"not json") | st.just(b""))


@settings(max_examples=80, deadline=None)
@given(answers=st.lists(_hostile_page(), min_size=1, max_size=5))
def test_any_answer_of_the_list_is_an_article_nothing_or_a_provider_error(answers: list) -> None:
    """Whatever the list answers (any status, any body, a good page with one node broken), the look-up gives an
    article of this request, None (so it is written again), or a ProviderError; a 2xx never raises, so a
    strange page cannot hold a request in the retry loop."""
    outcomes = outcomes_in_turn(
        lambda url: ArticleWriter(base_url=f"{url}/v1", api_key="sk-test", model="gpt-4o-mini", max_tokens=1200,
                                  timeout=5.0, max_connections=2, store_completions=True),
        [(lambda writer: writer.find_stored_article(REQUEST, request_id="req-1"), [answer]) for answer in answers])
    for (status, _), outcome in zip(answers, outcomes):
        if 200 <= status < 300:
            assert outcome is None or outcome.from_store and outcome.article["title"], (status, outcome)
        else:
            assert outcome is None or isinstance(outcome, ProviderError), (status, outcome)
