"""Stored chat completions in the OpenAI simulator, through the official SDK: what `store: true` keeps, how
the list filters, orders and pages, what it refuses, and a list that lags the creates."""
from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.asyncio

PROMPT = [{"role": "user", "content": "Write about tea."}]


def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0)


async def _create(c, request_id: str | None, *, store: bool = True, model: str = "gpt-4o-mini"):
    extra = {"store": store, "metadata": {"req": request_id}} if request_id else {}
    return await c.chat.completions.create(model=model, messages=PROMPT, max_tokens=50, **extra)


async def test_only_stored_completions_are_listed_by_metadata_and_model_in_either_order(sim):
    c = client(sim)
    first, second = await _create(c, "r1"), await _create(c, "r1")
    await _create(c, "r2")
    await _create(c, "r1", model="gpt-4o")
    await _create(c, None)   # not stored
    page = await c.chat.completions.list(metadata={"req": "r1"}, model="gpt-4o-mini")
    assert [item.id for item in page.data] == [first.id, second.id] and not page.has_more
    assert page.data[0].metadata == {"req": "r1"} and page.data[0].choices[0].message.content
    newest = await c.chat.completions.list(metadata={"req": "r1"}, model="gpt-4o-mini", order="desc", limit=1)
    assert [item.id for item in newest.data] == [second.id] and newest.has_more
    after = await c.chat.completions.list(metadata={"req": "r1"}, model="gpt-4o-mini", after=first.id)
    assert [item.id for item in after.data] == [second.id]
    assert len((await c.chat.completions.list()).data) == 4
    assert (await c.chat.completions.retrieve(first.id)).id == first.id
    assert sim.ledger()["openai"]["stored_completions"] == {"stored": 4, "reads": 5}
    assert sim.ledger()["openai"]["admitted"] == 5   # the reads are not in the rate window


@pytest.mark.parametrize("metadata", [{"k": 1}, {f"k{n}": "v" for n in range(17)}, {"k" * 65: "v"},
                                      {"k": "v" * 513}, ["k"]])
async def test_bad_metadata_is_refused(sim, metadata):
    with pytest.raises(openai.BadRequestError) as info:
        await client(sim).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=50,
                                                  store=True, metadata=metadata)
    assert "metadata" in info.value.message
    assert sim.ledger()["openai"]["stored_completions"]["stored"] == 0


async def test_bad_list_parameters_unknown_ids_and_no_key_are_refused(sim):
    c = client(sim)
    with pytest.raises(openai.BadRequestError):
        await c.chat.completions.list(limit=101)
    with pytest.raises(openai.BadRequestError):
        await c.chat.completions.list(order="sideways")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.retrieve("chatcmpl-none")
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.list(after="chatcmpl-none")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{sim.openai_base_url}/chat/completions")).status_code == 401


async def test_a_lagging_list_leaves_out_what_was_stored_moments_ago_but_the_read_by_id_sees_it(sim):
    sim.configure({"openai": {"stored_lag_seconds": 3600}})
    c = client(sim)
    made = await _create(c, "r1")
    assert (await c.chat.completions.list(metadata={"req": "r1"})).data == []
    assert (await c.chat.completions.retrieve(made.id)).id == made.id
    sim.reset()
    sim.configure({"openai": {"stored_lag_seconds": 0}})
    assert (await c.chat.completions.list()).data == []   # a reset forgets them
