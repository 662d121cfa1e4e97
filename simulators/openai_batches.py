"""OpenAI Files and Batch API simulator: /openai/v1/files and /openai/v1/batches.

A batch moves with the clock and is brought up to date whenever anything looks at it (no background task):
validating for ``validation_seconds``, then its lines run one after the other, ``seconds_per_request`` each,
then finalizing for ``finalizing_seconds`` (the three times ``latency_scale``). What has not run
``completion_window_seconds`` after creation expires. Batch lines never touch the real-time RPM/TPM window:
their own pool is the enqueued prompt tokens per model (``enqueued_token_limit``), held from the moment a batch
passes validation until it ends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import uuid
from typing import Any, Optional

from aiohttp import web

from .common import json_response, read_json, roll
from .content import prompt_chars, tokens_for

ORG = "org-simulator"
ENDPOINT = "/v1/chat/completions"
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_TTL = 30 * 86400
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def api_error(message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
              param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def unauthorized(request: web.Request, cfg: dict, request_id: str) -> Optional[web.Response]:
    auth = request.headers.get("Authorization", "")
    if not cfg.get("require_auth", True) or (auth.startswith("Bearer ") and auth[7:].strip()):
        return None
    return json_response(api_error("You didn't provide an API key. You need to provide your API key in an "
                                   "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."),
                         401, {"x-request-id": request_id})


def _unit(*parts: Any) -> float:
    """A number in [0, 1) fixed by ``parts`` (seeded decisions that do not depend on call order)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def invalid_request(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None) -> web.Response:
    return json_response(api_error(message, "invalid_request_error", code, param), status)


METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def metadata_problem(metadata: Any) -> Optional[str]:
    """Why a create's `metadata` is refused, None when it is fine: OpenAI's one rule for the metadata of a chat
    completion (openai_stored.py) and of a batch."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "Invalid type for 'metadata': expected an object."
    if len(metadata) > METADATA_PAIRS:
        return f"Invalid 'metadata': too many properties. Expected at most {METADATA_PAIRS}."
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            return f"Invalid 'metadata': key '{key[:20]}...' is longer than {METADATA_KEY_CHARS} characters."
        if not isinstance(value, str):
            return f"Invalid type for 'metadata.{key}': expected a string."
        if len(value) > METADATA_VALUE_CHARS:
            return f"Invalid 'metadata.{key}': string too long. Expected at most {METADATA_VALUE_CHARS} characters."
    return None


def _ts(t: Optional[float]) -> Optional[int]:
    return None if t is None else int(t)


class StoredFile:
    def __init__(self, filename: str, purpose: str, data: bytes, now: float, ttl: Optional[float]):
        self.id = "file-" + uuid.uuid4().hex[:22]
        self.filename, self.purpose, self.data, self.created_at = filename, purpose, data, now
        self.expires_at = now + ttl if ttl is not None else None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def json(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": int(self.created_at),
                "expires_at": _ts(self.expires_at), "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "status_details": None}


class Line:
    __slots__ = ("number", "custom_id", "body", "problem")

    def __init__(self, number: int, custom_id: str, body: dict, problem: Optional[tuple]):
        self.number, self.custom_id, self.body, self.problem = number, custom_id, body, problem


class Batch:
    def __init__(self, input_file_id: str, metadata: Optional[dict], now: float, cfg: dict, scale: float):
        self.id = "batch_" + uuid.uuid4().hex
        self.seq = 0                                               # n-th batch since reset: seeds its rolls
        self.input_file_id, self.metadata, self.created_at = input_file_id, metadata, now
        self.status = "validating"
        self.validate_at = now + float(cfg["validation_seconds"]) * scale
        self.expires_at = now + float(cfg["completion_window_seconds"])
        self.step = float(cfg["seconds_per_request"]) * scale     # fixed when the batch is created
        self.finalize = float(cfg["finalizing_seconds"]) * scale
        self.model: Optional[str] = None
        self.enqueued_tokens = 0
        self.errors: Optional[list[dict]] = None
        self.lines: list[Line] = []                                # in the order they run
        self.done = 0
        self.out: list[dict] = []
        self.err_out: list[dict] = []
        self.output_file_id: Optional[str] = None
        self.error_file_id: Optional[str] = None
        self.times: dict[str, float] = {}                          # in_progress_at, failed_at, ...

    def line_done_at(self, k: int) -> float:
        return self.times["in_progress_at"] + (k + 1) * self.step

    def release_at(self) -> float:
        """When this batch stops holding enqueued tokens (it ends): known from its schedule."""
        end = self.expires_at
        if self.lines and self.line_done_at(len(self.lines) - 1) <= self.expires_at:
            end = self.line_done_at(len(self.lines) - 1) + self.finalize
        if "cancelled_at" in self.times:
            end = min(end, self.times["cancelled_at"])
        return end

    def holds(self, model: str, t: float) -> bool:
        start = self.times.get("in_progress_at")
        return self.model == model and start is not None and start <= t < self.release_at()

    def json(self) -> dict:
        usage_in = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in self.out)
        usage_out = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in self.out)
        d = {"id": self.id, "object": "batch", "endpoint": ENDPOINT, "model": self.model,
             "errors": {"object": "list", "data": self.errors} if self.errors else None,
             "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
             "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
             "created_at": int(self.created_at), "expires_at": int(self.expires_at),
             "request_counts": {"total": len(self.lines), "completed": len(self.out), "failed": len(self.err_out)},
             "usage": {"input_tokens": usage_in, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": usage_out, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": usage_in + usage_out},
             "metadata": self.metadata}
        for key in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                    "cancelling_at", "cancelled_at"):
            d[key] = _ts(self.times.get(key))
        return d


class OpenAIBatches:
    """Files + batches for one OpenAISim (``sim``: config, clock, content generator, usage ledger)."""

    def __init__(self, sim: Any):
        self.sim = sim
        self.reset()

    def reset(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self.stats = {"api_calls": 0, "files_uploaded": 0, "batches_created": 0, "lines_completed": 0,
                      "lines_failed": 0}

    @property
    def cfg(self) -> dict:
        return self.sim.cfg["batch"]

    def now(self) -> float:
        return self.sim.state.now()

    # -- the clock ---------------------------------------------------------------------------------
    def advance_all(self, now: float) -> None:
        for b in sorted(self.batches.values(), key=lambda x: x.validate_at):   # validations in time order
            self._advance(b, now)

    def _advance(self, b: Batch, now: float) -> None:
        if b.status == "validating" and now >= b.validate_at:
            self._validate(b)
        if b.status not in ("in_progress", "finalizing", "cancelling"):
            return
        stop = min(now, b.expires_at, b.times.get("cancelling_at", math.inf))
        while b.done < len(b.lines) and b.line_done_at(b.done) <= stop:
            self._run_line(b, b.lines[b.done])
            b.done += 1
        if b.status == "cancelling":
            if now >= b.times["cancelled_at"]:
                self._finish(b, "cancelled")
        elif b.done < len(b.lines):
            if now >= b.expires_at:
                b.times["expired_at"] = b.expires_at
                for line in b.lines[b.done:]:
                    b.err_out.append(self._entry(line, None, {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}))
                self._finish(b, "expired")
        else:
            b.times.setdefault("finalizing_at", b.line_done_at(len(b.lines) - 1))
            b.status = "finalizing"
            if now >= b.times["finalizing_at"] + b.finalize:
                b.times["completed_at"] = b.times["finalizing_at"] + b.finalize
                self._finish(b, "completed")

    def _finish(self, b: Batch, status: str) -> None:
        b.status = status
        for kind, rows in (("output", b.out), ("error", b.err_out)):
            if rows:   # a file only where there is something to put in it
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                f = StoredFile(f"batch_{b.id}_{kind}.jsonl", "batch_output", data, self.now(),
                               float(self.cfg["output_file_ttl_seconds"]))
                self.files[f.id] = f
                setattr(b, f"{kind}_file_id", f.id)

    def _fail(self, b: Batch, errors: list[dict]) -> None:
        b.status, b.errors, b.lines = "failed", errors[:1000], []
        b.times["failed_at"] = b.validate_at

    # -- validation ---------------------------------------------------------------------------------
    def _validate(self, b: Batch) -> None:
        f = self.files.get(b.input_file_id)
        if f is None or f.purpose != "batch":
            why = f"No such File object: {b.input_file_id}" if f is None else \
                f"The input file {f.id} was uploaded with purpose '{f.purpose}', not 'batch'."
            return self._fail(b, [_berr("invalid_request", why, param="input_file_id")])
        rows = f.data.decode("utf-8", "replace").split("\n")
        while rows and not rows[-1].strip():
            rows.pop()
        if not rows:
            return self._fail(b, [_berr("empty_file", "The batch input file is empty.")])
        if len(rows) > int(self.cfg["max_requests"]):
            return self._fail(b, [_berr("too_many_tasks", f"The batch input file contains {len(rows):,} requests; "
                                                          f"the limit is {int(self.cfg['max_requests']):,}.")])
        errors: list[dict] = []
        lines: list[Line] = []
        seen: set[str] = set()
        for number, raw in enumerate(rows, 1):
            line, err = self._parse_line(number, raw, seen)
            if err is not None:
                errors.append(err)
                continue
            if b.model is None:
                b.model = line.body["model"]
            elif line.body["model"] != b.model:
                errors.append(_berr("model_mismatch", f"The model '{line.body['model']}' of this request does not "
                                    f"match the model of the batch ('{b.model}'). A batch uses one model.",
                                    number, "body.model"))
                continue
            lines.append(line)
        limit = int(self.cfg["max_input_file_bytes"])
        if len(f.data) > limit:
            errors.insert(0, _berr("file_too_large", f"The batch input file is larger than the {limit} maximum for "
                                   f"the {b.model or 'requested'} model. Please try again with a smaller batch."))
        if errors:
            return self._fail(b, errors)
        b.enqueued_tokens = sum(tokens_for(prompt_chars(x.body.get("messages"))) for x in lines)
        held = sum(o.enqueued_tokens for o in self.batches.values() if o is not b and o.holds(b.model, b.validate_at))
        cap = int(self.cfg["enqueued_token_limit"])
        if held + b.enqueued_tokens > cap:
            return self._fail(b, [_berr("token_limit_exceeded", f"Enqueued token limit reached for {b.model} in "
                                        f"organization {ORG}. Limit: {cap:,} enqueued tokens. Please try again once "
                                        f"some in_progress batches have been completed.")])
        seed = self.sim.state.config["seed"]
        b.lines = sorted(lines, key=lambda x: _unit(seed, b.seq, x.custom_id))   # no guaranteed order
        b.status = "in_progress"
        b.times["in_progress_at"] = b.validate_at

    def _parse_line(self, number: int, raw: str, seen: set[str]) -> tuple[Any, Optional[dict]]:
        try:
            obj = json.loads(raw)
        except ValueError:
            return None, _berr("invalid_json_line", "This line is not parseable as valid JSON.", number)
        if not isinstance(obj, dict):
            return None, _berr("invalid_json_line", "Each line must be a JSON object.", number)
        for key, typ in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
            if key not in obj:
                return None, _berr("missing_required_parameter", f"Missing required parameter: '{key}'.", number, key)
            if not isinstance(obj[key], typ):
                kind = "an object" if typ is dict else "a string"
                return None, _berr("invalid_type", f"Invalid type for '{key}': expected {kind}.", number, key)
        if obj["method"] != "POST":
            return None, _berr("invalid_request", "Only the POST method is supported.", number, "method")
        if obj["url"] != ENDPOINT:
            return None, _berr("url_mismatch", "The URL provided for this request does not match the batch "
                               f"endpoint ({ENDPOINT}).", number, "url")
        if obj["custom_id"] in seen:
            return None, _berr("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                               "request. The custom_id parameter must be unique for each request in a batch.",
                               number, "custom_id")
        body = obj["body"]
        if not isinstance(body.get("model"), str) or not body["model"]:
            return None, _berr("missing_required_parameter", "Missing required parameter: 'body.model'.",
                               number, "body.model")
        seen.add(obj["custom_id"])
        problem = self.sim.validate_request(body, body.get("messages"), self.sim.max_tokens_of(body))
        if problem is None and body.get("stream"):
            problem = ("Streaming is not supported in the Batch API.", "invalid_value", "stream")
        return Line(number, obj["custom_id"], body, problem), None

    # -- running ----------------------------------------------------------------------------------------
    def _entry(self, line: Line, response: Optional[dict], error: Optional[dict]) -> dict:
        return {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": line.custom_id, "response": response,
                "error": error}

    def _run_line(self, b: Batch, line: Line) -> None:
        rid = uuid.uuid4().hex
        seed = self.sim.state.config["seed"]
        if line.problem is not None:
            msg, code, param = line.problem
            resp = {"status_code": 400, "request_id": rid,
                    "body": api_error(msg, "invalid_request_error", code, param)}
        elif _unit(seed, "line-error", b.seq, line.custom_id) < float(self.cfg["line_error_rate"]):
            resp = {"status_code": 500, "request_id": rid, "body": api_error(SERVER_ERROR, "server_error")}
        else:
            body = line.body
            completion, _ = self.sim.completion(body, b.model, body.get("messages"), self.sim.max_tokens_of(body))
            u = completion["usage"]
            self.sim.record_usage(b.model, "batch", u["prompt_tokens"], u["completion_tokens"])
            self.stats["lines_completed"] += 1
            b.out.append(self._entry(line, {"status_code": 200, "request_id": rid, "body": completion}, None))
            return
        self.stats["lines_failed"] += 1
        b.err_out.append(self._entry(line, resp, None))

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _endpoint(self, fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.stats["api_calls"] += 1
            denied = unauthorized(request, self.sim.cfg, "req_" + uuid.uuid4().hex)
            if denied is not None:
                return denied
            if roll(self.sim.state.rng, float(self.cfg["api_error_rate"])):
                return json_response(api_error(SERVER_ERROR, "server_error"), 500)
            self.advance_all(self.now())
            return await fn(request)
        return handler

    async def upload_file(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return invalid_request(400, "Invalid Content-Type header: expected multipart/form-data.")
        limit = int(self.cfg["max_upload_bytes"])
        fields: dict[str, str] = {}
        data, filename, too_big = bytearray(), None, False
        async for part in await request.multipart():
            if getattr(part, "filename", None) is not None or part.name == "file":
                filename = part.filename or "upload"
                while chunk := await part.read_chunk(1 << 16):   # type: ignore[union-attr]
                    too_big = too_big or len(data) + len(chunk) > limit
                    if not too_big:
                        data.extend(chunk)
            elif part.name:
                fields[part.name] = await part.text()   # type: ignore[union-attr]
        purpose = fields.get("purpose")
        if filename is None:
            return invalid_request(400, "Missing required parameter: 'file'.", "missing_required_parameter", "file")
        if not purpose:
            return invalid_request(400, "Missing required parameter: 'purpose'.", "missing_required_parameter", "purpose")
        if purpose not in PURPOSES:
            return invalid_request(400, f"Invalid value for 'purpose': '{purpose}'.", "invalid_value", "purpose")
        if too_big:
            return invalid_request(400, f"File is too large. The maximum file size is {limit} bytes.", None, "file")
        if purpose == "batch":
            if not filename.lower().endswith(".jsonl"):
                return invalid_request(400, "Invalid file format for Batch API. Must be .jsonl")
            try:
                bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                return invalid_request(400, "Invalid file for Batch API. Must be utf-8 encoded")
        ttl: Optional[float] = BATCH_FILE_TTL if purpose == "batch" else None
        if fields.get("expires_after[seconds]", "").isdigit():
            ttl = float(fields["expires_after[seconds]"])
        f = StoredFile(filename, purpose, bytes(data), self.now(), ttl)
        self.files[f.id] = f
        self.stats["files_uploaded"] += 1
        return json_response(f.json())

    def _lookup(self, request: web.Request, key: str) -> tuple[Any, Optional[web.Response]]:
        """The file (key "file_id") or batch ("batch_id") the path names, or the 404 the real API answers."""
        ident = request.match_info[key]
        found = (self.files if key == "file_id" else self.batches).get(ident)
        if key == "file_id" and found is not None and found.expired(self.now()):
            del self.files[ident]   # an expired file is deleted, as the real API does: gone for good
            found = None
        if found is not None:
            return found, None
        if key == "file_id":
            return None, invalid_request(404, f"No such File object: {ident}", None, "id")
        return None, invalid_request(404, f"No batch found with id '{ident}'.", None, "batch_id")

    async def _get(self, key: str, request: web.Request) -> web.Response:
        obj, err = self._lookup(request, key)
        return err or json_response(obj.json())

    async def file_content(self, request: web.Request) -> web.Response:
        f, err = self._lookup(request, "file_id")
        return err or web.Response(body=f.data, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        f, err = self._lookup(request, "file_id")
        if err:
            return err
        del self.files[f.id]
        return json_response({"id": f.id, "object": "file", "deleted": True})

    async def list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        now = self.now()
        items = [f for f in self.files.values() if (purpose is None or f.purpose == purpose) and not f.expired(now)]
        return self._page(request, [f.json() for f in items], 10_000, 10_000)

    def _page(self, request: web.Request, items: list[dict], max_limit: int, default: int = 20) -> web.Response:
        """Cursor page, newest first (``after`` = id of the last item already seen)."""
        try:
            limit = int(request.query.get("limit", str(default)))
        except ValueError:
            limit = -1
        if not 1 <= limit <= max_limit:
            return invalid_request(400, f"Invalid 'limit': expected an integer between 1 and {max_limit}.", "invalid_value",
                        "limit")
        items = list(reversed(items))
        after = request.query.get("after")
        if after:
            ids = [x["id"] for x in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    async def create_batch(self, request: web.Request) -> web.Response:
        body, err = await read_json(request)
        if err or not isinstance(body, dict):
            return invalid_request(400, f"We could not parse the JSON body of your request. ({err or 'not an object'})")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(key), str) or not body[key]:
                return invalid_request(400, f"Missing required parameter: '{key}'.", "missing_required_parameter", key)
        if body["endpoint"] != ENDPOINT:
            return invalid_request(400, f"Invalid value for 'endpoint': the simulator serves only '{ENDPOINT}'.",
                        "invalid_value", "endpoint")
        if body["completion_window"] != "24h":
            return invalid_request(400, "Invalid value for 'completion_window': only '24h' is supported.", "invalid_value",
                        "completion_window")
        meta = body.get("metadata")
        if metadata_problem(meta) is not None:  # the batch says it in one message of its own
            return invalid_request(400, "Invalid 'metadata': at most 16 string keys (64 characters) with string values "
                             "(512 characters).", "invalid_value", "metadata")
        b = Batch(body["input_file_id"], meta, self.now(), self.cfg, self.sim.state.latency_scale)
        self.batches[b.id] = b
        self.stats["batches_created"] += 1
        b.seq = self.stats["batches_created"]
        self._advance(b, self.now())   # a zero validation time validates at once
        return json_response(b.json())

    async def cancel_batch(self, request: web.Request) -> web.Response:
        b, err = self._lookup(request, "batch_id")
        if err:
            return err
        assert b is not None
        if b.status in ("validating", "in_progress", "finalizing"):
            now = self.now()
            if b.status == "validating":
                b.lines = []   # never validated: nothing runs, nothing is enqueued
            b.status = "cancelling"
            b.times["cancelling_at"] = now
            b.times["cancelled_at"] = now + b.finalize
            self._advance(b, now)
        elif b.status not in ("cancelling", "cancelled"):
            return invalid_request(409, f"Cannot cancel a batch with status '{b.status}'.")
        return json_response(b.json())

    async def list_batches(self, request: web.Request) -> web.Response:
        return self._page(request, [b.json() for b in self.batches.values()], 100)

    def add_routes(self, app: web.Application, prefix: str) -> None:
        r, e = app.router, self._endpoint
        r.add_post(prefix + "/files", e(self.upload_file))
        r.add_get(prefix + "/files", e(self.list_files))
        r.add_get(prefix + "/files/{file_id}", e(functools.partial(self._get, "file_id")))
        r.add_delete(prefix + "/files/{file_id}", e(self.delete_file))
        r.add_get(prefix + "/files/{file_id}/content", e(self.file_content))
        r.add_post(prefix + "/batches", e(self.create_batch))
        r.add_get(prefix + "/batches", e(self.list_batches))
        r.add_get(prefix + "/batches/{batch_id}", e(functools.partial(self._get, "batch_id")))
        r.add_post(prefix + "/batches/{batch_id}/cancel", e(self.cancel_batch))

    # -- ledger -----------------------------------------------------------------------------------------
    def ledger_json(self) -> dict:
        now = self.now()
        self.advance_all(now)
        by_status: dict[str, int] = {}
        for b in self.batches.values():
            by_status[b.status] = by_status.get(b.status, 0) + 1
        models = {b.model for b in self.batches.values() if b.model}
        return {**self.stats, "by_status": by_status,
                "enqueued_tokens": {m: sum(b.enqueued_tokens for b in self.batches.values() if b.holds(m, now))
                                    for m in sorted(models)},
                "enqueued_token_limit": int(self.cfg["enqueued_token_limit"])}


def _berr(code: str, message: str, line: Optional[int] = None, param: Optional[str] = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}
