from __future__ import annotations

import asyncio
import json
import math
import re

import openai
import pytest
from pydantic import BaseModel

from .conftest import wait_until

pytestmark = pytest.mark.asyncio

PROMPT = [{"role": "system", "content": "You are a blog writer. Answer in JSON."},
          {"role": "user", "content": "Write an article about sourdough baking for busy parents."}]
PROMPT_CHARS = sum(len(m["content"]) for m in PROMPT)
RATE_HEADERS = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
                "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
DURATION_RE = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


class Article(BaseModel):
    title: str
    slug: str
    excerpt: str
    body: str
    tags: list[str]
    image_prompt: str
    image_alt: str


def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0)


async def test_plain_text_usage_and_determinism(sim):
    c = client(sim)
    r1 = await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=2000, user="site-a")
    r2 = await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=2000, user="site-a")
    content = r1.choices[0].message.content
    assert r1.object == "chat.completion" and r1.model == "gpt-4o-mini" and r1.id.startswith("chatcmpl-")
    assert r1.choices[0].message.role == "assistant" and r1.choices[0].finish_reason == "stop"
    assert content == r2.choices[0].message.content  # deterministic from the prompt
    assert "sourdough" in content.lower()
    assert r1.usage.prompt_tokens == math.ceil(PROMPT_CHARS / 4)
    assert r1.usage.completion_tokens == math.ceil(len(content) / 4)
    assert r1.usage.total_tokens == r1.usage.prompt_tokens + r1.usage.completion_tokens
    other = await c.chat.completions.create(model="gpt-4o-mini", max_tokens=2000,
                                            messages=[{"role": "user", "content": "Tell me about kayaks"}])
    assert other.choices[0].message.content != content


async def test_truncation_sets_length(sim):
    r = await client(sim).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=10)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 10
    assert len(r.choices[0].message.content) <= 40


async def test_structured_output_parses_into_schema(sim):
    c = client(sim)
    r = await c.chat.completions.parse(model="gpt-4o-2024-08-06", messages=PROMPT, response_format=Article,
                                       max_completion_tokens=1500, user="site-a")
    a = r.choices[0].message.parsed
    assert isinstance(a, Article)
    assert a.title and "sourdough" in a.title.lower()
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", a.slug)
    assert a.tags and all(isinstance(t, str) and t for t in a.tags)
    assert a.body.count("\n\n") >= 2, "body should have several paragraphs"
    assert a.image_prompt and a.image_alt and a.excerpt
    assert r.usage.completion_tokens <= 1500
    assert r.usage.completion_tokens == math.ceil(len(r.choices[0].message.content) / 4)
    # body length roughly proportional to the token budget
    big = await c.chat.completions.parse(model="gpt-4o-2024-08-06", messages=PROMPT, response_format=Article,
                                         max_completion_tokens=4000)
    assert len(big.choices[0].message.parsed.body) > 2 * len(a.body)
    assert big.usage.completion_tokens <= 4000


async def test_generic_json_schema(sim):
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["headline", "count", "score", "draft", "meta", "sections", "level", "maybe"],
        "properties": {
            "headline": {"type": "string"},
            "count": {"type": "integer", "minimum": 3, "maximum": 9},
            "score": {"type": "number"},
            "draft": {"type": "boolean"},
            "meta": {"$ref": "#/$defs/Meta"},
            "sections": {"type": "array", "items": {"$ref": "#/$defs/Section"}},
            "level": {"type": "string", "enum": ["beginner", "expert"]},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "$defs": {
            "Meta": {"type": "object", "properties": {"keywords": {"type": "array", "items": {"type": "string"}},
                                                      "seo_title": {"type": "string"}},
                     "required": ["keywords", "seo_title"], "additionalProperties": False},
            "Section": {"type": "object", "properties": {"heading": {"type": "string"},
                                                         "content": {"type": "string"}},
                        "required": ["heading", "content"], "additionalProperties": False},
        },
    }
    r = await client(sim).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=1200,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == set(schema["properties"])
    assert isinstance(obj["headline"], str)
    assert isinstance(obj["count"], int) and 3 <= obj["count"] <= 9
    assert isinstance(obj["score"], (int, float)) and isinstance(obj["draft"], bool)
    assert isinstance(obj["meta"]["keywords"], list) and isinstance(obj["meta"]["seo_title"], str)
    assert obj["sections"] and all(isinstance(s["content"], str) and s["content"] for s in obj["sections"])
    assert obj["level"] == "beginner" and isinstance(obj["maybe"], str)
    assert r.usage.completion_tokens <= 1200


async def test_json_object_mode(sim):
    c = client(sim)
    with pytest.raises(openai.BadRequestError):
        await c.chat.completions.create(model="gpt-4o-mini", response_format={"type": "json_object"},
                                        messages=[{"role": "user", "content": "an article please"}])
    r = await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=800,
                                        response_format={"type": "json_object"})
    obj = json.loads(r.choices[0].message.content)
    assert {"title", "slug", "excerpt", "body", "tags", "image_prompt", "image_alt"} <= set(obj)


async def test_rpm_limit_429_with_headers(sim):
    sim.configure({"openai": {"rpm": 3}})
    c = client(sim)
    for i in range(3):
        raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT,
                                                                 max_tokens=50, user="site-a")
        for h in RATE_HEADERS:
            assert h in raw.headers
        assert raw.headers["x-ratelimit-remaining-requests"] == str(3 - i - 1)
        assert DURATION_RE.match(raw.headers["x-ratelimit-reset-requests"])
    with pytest.raises(openai.RateLimitError) as ei:
        await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=50, user="site-a")
    err = ei.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.message and "Rate limit reached for" in str(err.body.get("message"))
    h = err.response.headers
    for name in RATE_HEADERS:
        assert name in h
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert DURATION_RE.match(h["x-ratelimit-reset-requests"]) and DURATION_RE.match(h["x-ratelimit-reset-tokens"])
    assert 1 <= int(h["retry-after"]) <= 30
    assert 0 < int(h["retry-after-ms"]) <= 30_000
    led = sim.ledger()["openai"]
    assert led["admitted"] == 3 and led["rejected_429"] == 1 and led["calls"] == 4
    assert led["max_requests_in_window"] == 3
    assert led["per_site"]["site-a"]["rejected_429"] == 1


async def test_tpm_rejection(sim):
    sim.configure({"openai": {"tpm": 5000}})
    c = client(sim)
    p = math.ceil(PROMPT_CHARS / 4)
    first = await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=3000)
    used = first.usage.total_tokens  # settled amount now in the window
    with pytest.raises(openai.RateLimitError) as ei:  # charge = p + max_tokens = one token too many
        await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5000 - used - p + 1)
    assert ei.value.type == "tokens" and ei.value.code == "rate_limit_exceeded"
    assert ei.value.response.headers["x-ratelimit-remaining-tokens"] == str(5000 - used)
    # exactly filling the window is allowed
    await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5000 - used - p)
    ledger = sim.ledger()
    led = ledger["openai"]
    assert led["rejected_429_by_reason"] == {"tokens": 1}
    assert led["max_tokens_in_window_enforced"] == 5000
    # The 429 is listed: when, why, the window as it stood (1 request, `used` tokens) and the charge.
    ((at, reason, requests, tokens, charge),) = led["rejections"]
    assert reason == "tokens" and (requests, tokens, charge) == (1, used, 5000 - used + 1)
    assert abs(at - ledger["now"]) < 30
    assert ledger["loop_lag"]["samples"] >= 0


async def test_request_larger_than_tpm(sim):
    sim.configure({"openai": {"tpm": 1000}})
    with pytest.raises(openai.RateLimitError) as ei:
        await client(sim).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=2000)
    assert "Request too large" in ei.value.body["message"] and ei.value.type == "tokens"


async def test_settlement_returns_unspent_reservation(sim):
    sim.configure({"openai": {"tpm": 10_000}})
    c = client(sim)
    charge = math.ceil(PROMPT_CHARS / 4) + 4000
    used = 0
    for _ in range(3):  # 3 x 4000-token reservations > 10k; only fits because reservations settle
        raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT,
                                                                 max_tokens=4000)
        comp = raw.parse()
        used += comp.usage.total_tokens
        assert comp.usage.total_tokens < charge
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used)
    led = sim.ledger()["openai"]
    assert led["tokens_charged_total"] == 3 * charge
    assert led["tokens_settled_total"] == used == led["current_tokens_in_window"]
    assert led["max_tokens_in_window_settled"] == used
    assert led["max_tokens_in_window"] > 10_000 >= led["max_tokens_in_window_enforced"]


async def test_window_slides(sim):
    sim.configure({"window_seconds": 0.5, "openai": {"rpm": 2}})
    c = client(sim)
    for _ in range(2):
        await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)
    with pytest.raises(openai.RateLimitError):
        await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)
    await asyncio.sleep(0.6)
    await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)


async def test_error_rate_gives_5xx_and_counts(sim):
    sim.configure({"openai": {"error_rate": 1.0, "rpm": 2}})
    c = client(sim)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as ei:
            await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)
        assert ei.value.status_code in (500, 503)
        assert ei.value.body["type"] == "server_error"
    with pytest.raises(openai.RateLimitError):  # the faults were admitted: the window is full
        await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)
    led = sim.ledger()["openai"]
    assert led["errors_5xx"] == 2 and led["admitted"] == 2 and led["rejected_429"] == 1


async def test_external_load_consumes_window(sim):
    sim.configure({"openai": {"rpm": 5, "external_rpm": 6000, "external_tpm_per_request": 100}})
    wait_until(lambda: sim.ledger()["openai"]["current_requests_in_window"] >= 5)
    sim.configure({"openai": {"external_rpm": 0}})
    with pytest.raises(openai.RateLimitError):
        await client(sim).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)
    led = sim.ledger()["openai"]
    assert led["external_admitted"] == 5 and led["admitted"] == 0
    assert led["max_requests_in_window"] == 5 and led["current_tokens_in_window"] == 500
    ev = sim.events("openai")
    assert len(ev) == 5 and all(e[3] is True and e[2] == 100 for e in ev)


async def test_burst_ledger_never_exceeds_limit(sim):
    sim.configure({"openai": {"rpm": 10}})
    c = client(sim)

    async def one(i):
        try:
            await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=30,
                                            user=f"site-{i % 2}")
            return True
        except openai.RateLimitError:
            return False

    results = await asyncio.gather(*(one(i) for i in range(30)))
    assert sum(results) == 10
    led = sim.ledger()["openai"]
    assert led["admitted"] == 10 and led["rejected_429"] == 20
    assert led["max_requests_in_window"] == 10 == led["max_requests_in_window_recomputed"]
    assert set(led["per_site"]) == {"site-0", "site-1"}
    assert sum(s["admitted"] for s in led["per_site"].values()) == 10
    assert max(s["max_concurrent"] for s in led["per_site"].values()) > 1
    assert all(s["in_progress"] == 0 for s in led["per_site"].values())
    ev = sim.events("openai", since=0)
    assert len(ev) == 10 and {e[1] for e in ev} == {"site-0", "site-1"} and not any(e[3] for e in ev)


async def test_streaming(sim):
    stream = await client(sim).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=100,
                                                       stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage is not None and usage.completion_tokens == math.ceil(len(text) / 4)


async def test_auth_required(sim):
    import httpx
    async with httpx.AsyncClient() as h:
        r = await h.post(sim.openai_base_url + "/chat/completions", json={"model": "x", "messages": PROMPT})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("refund", [True, False])
async def test_remaining_tokens_after_small_usage_follow_the_token_semantics(sim, refund):
    sim.configure({"openai": {"tpm": 10_000, "refund_unused_tokens": refund}})
    c = client(sim)
    charge = math.ceil(PROMPT_CHARS / 4) + 4000
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=4000)
    used = raw.parse().usage.total_tokens
    assert used < charge / 2   # small actual usage
    # refunded: the window holds what was used; not refunded: the whole admission estimate stays
    counted = used if refund else charge
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(10_000 - counted)
    await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=4000)
    if refund:   # a third 4000-token reservation fits only because the first two were settled down
        await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=4000)
    else:
        with pytest.raises(openai.RateLimitError) as ei:
            await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=4000)
        err = ei.value
        assert err.type == "tokens" and err.code == "rate_limit_exceeded"
        assert "tokens per min (TPM)" in err.body["message"] and f"Used {2 * charge}" in err.body["message"]
        h = err.response.headers
        assert h["x-ratelimit-remaining-tokens"] == str(10_000 - 2 * charge)
        assert DURATION_RE.match(h["x-ratelimit-reset-tokens"]) and int(h["retry-after"]) >= 1
    led = sim.ledger()["openai"]
    calls = 3 if refund else 2
    assert led["limits"]["refund_unused_tokens"] is refund
    assert led["tokens_charged_total"] == calls * charge
    assert led["tokens_counted_total"] == led["current_tokens_in_window"]
    assert led["tokens_counted_total"] == (led["tokens_settled_total"] if refund else calls * charge)
    usage = led["usage_by_model"]["gpt-4o-mini"]
    assert usage["realtime"]["requests"] == calls and usage["batch"]["requests"] == 0
    assert usage["realtime"]["prompt_tokens"] + usage["realtime"]["completion_tokens"] == led["tokens_settled_total"]
    ev = sim.events("openai")   # [t, site, tokens counted, external, charged at admission, settled at]
    assert len(ev) == calls and all((e[2] < e[4]) if refund else (e[2] == e[4]) for e in ev)


async def test_no_refund_charges_max_tokens_times_n(sim):
    sim.configure({"openai": {"tpm": 10_000, "refund_unused_tokens": False}})
    raw = await client(sim).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT,
                                                                       max_tokens=1000, n=3)
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(10_000 - math.ceil(PROMPT_CHARS / 4) - 3000)


async def test_estimate_error_is_small_seeded_and_what_the_window_counts(sim):
    sim.configure({"openai": {"tpm": 1_000_000, "refund_unused_tokens": False, "estimate_error": 0.02}})
    c = client(sim)
    p = math.ceil(PROMPT_CHARS / 4)

    async def charges() -> list[int]:
        out, before = [], 1_000_000
        for max_tokens in (500, 1000, 1500, 2000, 2500, 3000):
            raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT,
                                                                     max_tokens=max_tokens)
            left = int(raw.headers["x-ratelimit-remaining-tokens"])
            out.append(before - left)
            before = left
        return out

    first = await charges()
    estimates = [p + m for m in (500, 1000, 1500, 2000, 2500, 3000)]
    assert all(abs(ch - est) <= 0.02 * est + 1 for ch, est in zip(first, estimates))
    assert first != estimates   # the provider's count is not the client's estimate
    assert sim.ledger()["openai"]["tokens_charged_total"] == sum(first)
    sim.reset()
    assert await charges() == first   # deterministic from the seed and the request


async def test_billing_is_the_usage_of_every_answered_request_at_the_model_price(sim):
    c = client(sim)
    first = await c.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=2000)
    cut = await c.chat.completions.create(model="gpt-4o", messages=PROMPT, max_tokens=5)  # truncated: billed too
    await c.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=50)
    assert cut.choices[0].finish_reason == "length"
    bill = sim.ledger()["openai"]["billing"]
    mini = (first.usage.prompt_tokens * 0.15 + first.usage.completion_tokens * 0.60) / 1e6
    big = (cut.usage.prompt_tokens * 2.50 + cut.usage.completion_tokens * 10.00) / 1e6
    assert bill["by_model"]["gpt-4o-mini"]["realtime"] == pytest.approx(mini)
    assert bill["by_model"]["gpt-4o"]["realtime"] == pytest.approx(big)
    assert bill["usd"] == pytest.approx(mini + big) and bill["unpriced_requests"] == 1
