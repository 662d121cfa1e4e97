"""OpenAI Chat Completions simulator: POST /openai/v1/chat/completions."""

from __future__ import annotations

import hashlib
import json
import math
import string
import time
from typing import Any, Optional

from aiohttp import web

from .common import SimContext, json_response, provider_latency, read_json, roll, sleep
from .content import (ARTICLE_SCHEMA, TextGen, messages_text, plain_content, prompt_chars,
                      structured_content, tokens_for)
from .openai_batches import ORG, OpenAIBatches, api_error as _err, metadata_problem, unauthorized
from .openai_stored import StoredCompletions
from .window import (Decision, ProviderLedger, SlidingWindow, format_duration,
                     max_requests_in_any_window, max_tokens_in_any_window)

RATE_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."

SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}


def _site_json(st: Any) -> dict:
    d = vars(st).copy()
    d.pop("max_requests_in_window", None)  # the window is shared by all sites (one API key)
    return d


class OpenAISim:
    name = "openai"

    def __init__(self, state: SimContext):
        self.state = state
        self.batches = OpenAIBatches(self)
        self.stored = StoredCompletions(self)
        self.reset()

    def reset(self) -> None:
        self.window = SlidingWindow()
        self.ledger = ProviderLedger()
        # tokens_settled_total: what the calls really used (prompt + completion; prompt only for a 5xx, 0 for
        # a 400); tokens_counted_total: what stayed counted against TPM once settled (the same when unused
        # reservation is refunded, the admission charge when it is not).
        self.ledger.extra.update(tokens_charged_total=0, tokens_settled_total=0, tokens_counted_total=0,
                                 completions=0, truncated=0, by_model={})
        self.usage_by_model: dict[str, dict[str, dict[str, int]]] = {}
        self.batches.reset()
        self.stored.reset()

    def record_usage(self, model: str, lane: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Billed usage of one successful request, per model and lane ("realtime" | "batch")."""
        by_lane = self.usage_by_model.setdefault(model, {
            ln: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0} for ln in ("realtime", "batch")})
        u = by_lane[lane]
        u["requests"] += 1
        u["prompt_tokens"] += int(prompt_tokens)
        u["completion_tokens"] += int(completion_tokens)

    def billing(self) -> dict:
        """What OpenAI would invoice for the usage so far, in US dollars: per model and lane, and the total.

        Every successful request is billed for its `usage` (a truncated one too); 4xx, 5xx and 429s cost
        nothing. Batch lines at the batch prices. A model without a price is counted in `unpriced_requests`.
        """
        prices = self.cfg.get("prices") or {}
        by_model: dict[str, dict[str, float]] = {}
        unpriced = 0
        for model, lanes in self.usage_by_model.items():
            price = prices.get(model)
            if price is None:
                unpriced += sum(u["requests"] for u in lanes.values())
                continue
            row = by_model[model] = {}
            for lane, prefix in (("realtime", ""), ("batch", "batch_")):
                u = lanes[lane]
                row[lane] = (u["prompt_tokens"] * price[prefix + "input"]
                             + u["completion_tokens"] * price[prefix + "output"]) / 1_000_000
        return {"usd": sum(v for row in by_model.values() for v in row.values()), "by_model": by_model,
                "unpriced_requests": unpriced}

    def admission_charge(self, body: dict, prompt_tokens: int, max_tokens: Any) -> int:
        """prompt estimate + max_tokens x n, off by up to ``estimate_error`` (relative; deterministic from the
        seed and the request, like a tokenizer that is wrong the same way for the same text)."""
        n = body.get("n")
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        est = prompt_tokens + (max_tokens * n if isinstance(max_tokens, int) and max_tokens > 0 else 0)
        err = float(self.cfg.get("estimate_error", 0) or 0)
        if not err:
            return est
        key = f"{self.state.config['seed']}:{json.dumps(body, sort_keys=True, default=str)}"
        u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
        return max(0, round(est * (1 + err * (2 * u - 1))))

    @property
    def cfg(self) -> dict:
        return self.state.config["openai"]

    # -- rate-limit headers --------------------------------------------------------------------
    def rl_headers(self, now: float) -> dict[str, str]:
        w = self.state.window_seconds
        rpm, tpm = int(self.cfg["rpm"]), int(self.cfg["tpm"])
        n = self.window.count(now, w)
        tok = self.window.tokens(now, w)
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-requests": str(max(0, rpm - n)),
            "x-ratelimit-remaining-tokens": str(max(0, tpm - tok)),
            "x-ratelimit-reset-requests": format_duration(self.window.reset_requests(now, w)),
            "x-ratelimit-reset-tokens": format_duration(self.window.reset_tokens(now, w)),
        }

    def _common_headers(self, request_id: str, now: float) -> dict[str, str]:
        h = self.rl_headers(now)
        h.update({"x-request-id": request_id, "openai-organization": ORG, "openai-version": "2020-10-01"})
        return h

    def _rate_limited(self, model: str, dec: Decision, charge: int, request_id: str, now: float) -> web.Response:
        rpm, tpm = int(self.cfg["rpm"]), int(self.cfg["tpm"])
        wait = format_duration(dec.retry_after)
        if dec.reason == "requests":
            msg = (f"Rate limit reached for {model} in organization {ORG} on requests per min (RPM): "
                   f"Limit {rpm}, Used {dec.used_requests}, Requested 1. Please try again in {wait}. {RATE_DOCS}")
            typ = "requests"
        elif dec.reason == "tokens":
            msg = (f"Rate limit reached for {model} in organization {ORG} on tokens per min (TPM): "
                   f"Limit {tpm}, Used {dec.used_tokens}, Requested {charge}. Please try again in {wait}. "
                   f"{RATE_DOCS}")
            typ = "tokens"
        else:
            msg = (f"Request too large for {model} in organization {ORG} on tokens per min (TPM): "
                   f"Limit {tpm}, Requested {charge}. The input or output tokens must be reduced in order "
                   f"to run successfully. {RATE_DOCS}")
            typ = "tokens"
        headers = self._common_headers(request_id, now)
        headers["retry-after"] = str(max(1, math.ceil(dec.retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(dec.retry_after * 1000)))
        return json_response(_err(msg, typ, "rate_limit_exceeded"), 429, headers)

    # -- admission ------------------------------------------------------------------------------
    def try_admit(self, charge: int, site: str, external: bool) -> tuple[Decision, Any]:
        now = self.state.now()
        w = self.state.window_seconds
        dec = self.window.check(now, w, int(self.cfg["rpm"]), int(self.cfg["tpm"]), charge)
        if not dec.ok:
            return dec, None
        ent = self.window.add(now, charge, external, site)
        self.ledger.record_admission("requests", self.window, ent, now, w, self.state.max_events)
        self.ledger.record_tokens(self.window, now, w)
        return dec, ent

    def external_tick(self) -> None:
        charge = int(self.cfg.get("external_tpm_per_request", 0))
        dec, ent = self.try_admit(charge, "_external", True)
        if ent is None:
            self.ledger.external_rejected += 1
        else:
            self.ledger.external_admitted += 1

    # -- handler --------------------------------------------------------------------------------
    def _rid(self) -> str:
        return "req_" + "".join(self.state.rng.choice(string.hexdigits.lower()[:16]) for _ in range(32))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        request_id = self._rid()
        led = self.ledger
        led.calls += 1
        denied = unauthorized(request, self.cfg, request_id)
        if denied is not None:
            led.rejected_4xx += 1
            return denied
        body, err = await read_json(request)
        if err or not isinstance(body, dict):
            led.rejected_4xx += 1
            return json_response(_err(f"We could not parse the JSON body of your request. ({err or 'not an object'})",
                                      "invalid_request_error"), 400, {"x-request-id": request_id})

        messages = body.get("messages")
        model = body.get("model") if isinstance(body.get("model"), str) else "unknown-model"
        site = body.get("user") or body.get("safety_identifier") or request.headers.get("x-sim-site") or "-"
        site = str(site)
        max_tokens = self.max_tokens_of(body)
        prompt_tokens = tokens_for(prompt_chars(messages))
        charge = self.admission_charge(body, prompt_tokens, max_tokens)

        site_stats = led.site(site)
        site_stats.calls += 1
        dec, ent = self.try_admit(charge, site, False)
        if ent is None:
            led.reject(dec.reason or "requests", state.now(), dec, charge)
            site_stats.rejected_429 += 1
            return self._rate_limited(model, dec, charge, request_id, state.now())
        led.admitted += 1
        site_stats.admitted += 1
        led.extra["tokens_charged_total"] += charge
        t_start = time.monotonic()
        site_stats.start()
        try:
            problem = self.validate_request(body, messages, max_tokens)
            if problem is not None:  # admitted (counted), but rejected without model latency
                self._settle(ent, site_stats, 0)
                led.rejected_4xx += 1
                return json_response(_err(problem[0], "invalid_request_error", problem[1], problem[2]), 400,
                                     self._common_headers(request_id, state.now()))
            latency = provider_latency(state.rng, self.cfg, self.cfg["latency"], state.latency_scale)
            fault = roll(state.rng, self.cfg.get("error_rate", 0))
            fault_status = state.rng.choice(self.cfg.get("error_statuses", [500, 503])) if fault else 0
            await sleep(latency)
            if fault:
                self._settle(ent, site_stats, prompt_tokens)
                led.errors_5xx += 1
                site_stats.errors_5xx += 1
                return json_response(_err(SERVER_ERRORS.get(fault_status, "Internal error."), "server_error"),
                                     fault_status, self._common_headers(request_id, state.now()))

            completion, truncated = self.completion(body, model, messages, max_tokens)
            self.stored.keep(body, completion, request_id)
            usage = completion["usage"]
            self._settle(ent, site_stats, usage["total_tokens"])
            self.record_usage(model, "realtime", usage["prompt_tokens"], usage["completion_tokens"])
            led.extra["completions"] += 1
            led.extra["truncated"] += int(truncated)
            bm = led.extra["by_model"]
            bm[model] = bm.get(model, 0) + 1
            headers = self._common_headers(request_id, state.now())
            headers["openai-processing-ms"] = str(int((time.monotonic() - t_start) * 1000))
            if body.get("stream"):
                return await self._stream(request, completion, headers, body)
            return json_response(completion, 200, headers)
        finally:
            site_stats.end()

    def max_tokens_of(self, body: dict) -> Any:
        for key in ("max_completion_tokens", "max_tokens"):
            if body.get(key) is not None:
                return body[key]
        return int(self.cfg.get("default_max_tokens", 4096))

    def completion(self, body: dict, model: str, messages: Any, max_tokens: int) -> tuple[dict, bool]:
        """The chat.completion object for a valid request (the real-time endpoint and every batch line)."""
        state = self.state
        content, truncated = self._content(body, messages, max_tokens)
        prompt_tokens = tokens_for(prompt_chars(messages))
        completion_tokens = min(max_tokens, tokens_for(len(content)))
        return {
            "id": "chatcmpl-" + "".join(state.rng.choice(string.ascii_letters + string.digits) for _ in range(29)),
            "object": "chat.completion",
            "created": int(state.now()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if truncated else "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_sim0001",
        }, truncated

    def _settle(self, ent: Any, site_stats: Any, tokens: int) -> None:
        """Record what the call used; what stays counted in the window depends on ``refund_unused_tokens``."""
        counted = int(tokens) if self.cfg.get("refund_unused_tokens", True) else ent.charged
        ent.tokens = counted
        ent.settled_at = self.state.now()
        self.ledger.extra["tokens_settled_total"] += int(tokens)
        self.ledger.extra["tokens_counted_total"] += counted
        site_stats.tokens_settled += int(tokens)

    @staticmethod
    def validate_request(body: dict, messages: Any, max_tokens: Any) -> Optional[tuple[str, Optional[str], Optional[str]]]:
        if not isinstance(body.get("model"), str) or not body.get("model"):
            return "you must provide a model parameter", None, None
        if not isinstance(messages, list) or not messages:
            return "Missing required parameter: 'messages'.", "missing_required_parameter", "messages"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                return f"Invalid value for 'messages[{i}].role'.", "invalid_value", f"messages[{i}].role"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return ("Invalid 'max_tokens': integer below minimum value. Expected a value >= 1.",
                    "integer_below_min_value", "max_tokens")
        if (problem := metadata_problem(body.get("metadata"))) is not None:
            return problem, "invalid_value", "metadata"
        if "store" in body and not isinstance(body["store"], bool) and body["store"] is not None:
            return "Invalid type for 'store': expected a boolean.", "invalid_type", "store"
        rf = body.get("response_format")
        if rf is not None:
            if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
                return "Invalid value for 'response_format.type'.", "invalid_value", "response_format.type"
            if rf["type"] == "json_schema":
                js = rf.get("json_schema")
                if not isinstance(js, dict) or not isinstance(js.get("name"), str):
                    return ("Missing required parameter: 'response_format.json_schema.name'.",
                            "missing_required_parameter", "response_format.json_schema.name")
                if "schema" in js and not isinstance(js["schema"], dict):
                    return "Invalid type for 'response_format.json_schema.schema'.", "invalid_type", \
                        "response_format.json_schema.schema"
            if rf["type"] == "json_object":
                allm = messages_text(messages, ("system", "developer", "user", "assistant"))
                if "json" not in allm.lower():
                    return ("'messages' must contain the word 'json' in some form, to use 'response_format' "
                            "of type 'json_object'.", None, "messages")
        return None

    @staticmethod
    def _content(body: dict, messages: Any, max_tokens: int) -> tuple[str, bool]:
        rf = body.get("response_format") or {}
        seed = json.dumps([messages, rf], sort_keys=True, default=str)
        prompt = messages_text(messages, ("user",)) or messages_text(messages, ("system", "developer", "user"))
        gen = TextGen(seed, prompt)
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object", "properties": {}}
            return structured_content(gen, schema, max_tokens)
        if isinstance(rf, dict) and rf.get("type") == "json_object":
            return structured_content(gen, ARTICLE_SCHEMA, max_tokens)
        return plain_content(gen, max_tokens)

    async def _stream(self, request: web.Request, completion: dict, headers: dict, body: dict) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={**headers, "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"
        content = completion["choices"][0]["message"]["content"]

        async def send(obj: dict) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})
        for i in range(0, len(content), 64):
            await send({**base, "choices": [{"index": 0, "delta": {"content": content[i:i + 64]},
                                             "finish_reason": None}]})
        await send({**base, "choices": [{"index": 0, "delta": {},
                                         "finish_reason": completion["choices"][0]["finish_reason"]}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**base, "choices": [], "usage": completion["usage"]})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- ledger -----------------------------------------------------------------------------
    def ledger_json(self) -> dict:
        led = self.ledger
        now = self.state.now()
        w = self.state.window_seconds
        evs = led.events.get("requests", [])
        return {
            "calls": led.calls,
            "admitted": led.admitted,
            "rejected_429": led.rejected_429,
            "rejected_429_by_reason": dict(led.rejected_by_reason),
            "rejections": list(led.rejections),
            "rejected_4xx": led.rejected_4xx,
            "errors_5xx": led.errors_5xx,
            "external_admitted": led.external_admitted,
            "external_rejected": led.external_rejected,
            "max_requests_in_window": led.max_requests_in_window.get("requests", 0),
            "max_requests_in_window_recomputed": max_requests_in_any_window(evs, w),
            "max_tokens_in_window": led.max_tokens_charged_in_window,
            "max_tokens_in_window_enforced": led.max_tokens_enforced_in_window,
            "max_tokens_in_window_settled": max_tokens_in_any_window(evs, w),
            "current_requests_in_window": self.window.count(now, w),
            "current_tokens_in_window": self.window.tokens(now, w),
            **led.extra,
            "usage_by_model": self.usage_by_model,
            "billing": self.billing(),
            "batch": self.batches.ledger_json(),
            "stored_completions": self.stored.ledger_json(),
            "limits": {"rpm": self.cfg["rpm"], "tpm": self.cfg["tpm"], "window_seconds": w,
                       "refund_unused_tokens": bool(self.cfg.get("refund_unused_tokens", True))},
            "per_site": {k: _site_json(v) for k, v in led.per_site.items()},
        }

    def events(self, since: float, window: Optional[str] = None) -> list:
        return [e.as_event() for e in self.ledger.events.get("requests", []) if e.t >= since]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/v1/chat/completions", self.chat_completions)
        self.batches.add_routes(app, "/openai/v1")
        self.stored.add_routes(app, "/openai/v1")
