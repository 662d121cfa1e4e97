"""Parsing and checking a submission (pure): every problem named by item and field.

A submission is one request (a JSON object) or {"requests": [...]}; the field
rules themselves are the contract's (streams/contract), shared with every
other entrance. A request id another site already uses is refused (409); the
one piece here that is not pure, `OwnerLookup`, reads whose ids they are for
all the submissions that arrive together in one query.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

from streams.api.http import ID_PATTERN, IntakeError
from streams.contract import NotJson, check_request, read_json


@dataclass(frozen=True)
class ItemError:
    item: int  # index in the submission (0 for a single request)
    field: str  # path inside the submitted body, e.g. "requests[3].keywords[1]" or "topic"
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "field": self.field, "message": self.message}


def invalid(errors: Sequence[ItemError]) -> IntakeError:
    shown = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    noun = "problem" if len(errors) == 1 else "problems"
    return IntakeError(
        422,
        f"nothing was accepted: {len(errors)} {noun}: {shown}{more}",
        errors=[e.as_dict() for e in errors],
    )


# --------------------------------------------------------------------------- parsing and validation (pure)


def parse_body(raw: bytes, *, max_batch: int) -> tuple[list[Any], bool]:
    """(items, is_batch) from a body; IntakeError 400/422 for what is not a submission."""
    try:
        value = read_json(raw)  # the one way every door reads JSON (streams/contract/json_text.py)
    except NotJson as exc:
        hint = ": send one request as a JSON object, or {\"requests\": [...]}" if exc.reason == "empty" else ""
        raise IntakeError(400, f"the body is {exc.reason}{hint}") from None
    if not isinstance(value, dict):
        raise IntakeError(
            422,
            "the body must be a JSON object: one request, or {\"requests\": [...]} for a batch",
            errors=[ItemError(0, "", "must be a JSON object").as_dict()],
        )
    if "requests" not in value:
        return [value], False
    extra = sorted(k for k in value if k != "requests")
    items = value["requests"]
    problems: list[ItemError] = [ItemError(0, k, "is not a field of a batch (only \"requests\")") for k in extra]
    if not isinstance(items, list):
        problems.append(ItemError(0, "requests", "must be a list of request objects"))
    elif not items:
        problems.append(ItemError(0, "requests", "must not be empty"))
    elif len(items) > max_batch:
        problems.append(ItemError(0, "requests", f"has {len(items)} requests; at most {max_batch} per batch (split it)"))
    if problems:
        raise invalid(problems)
    return items, True


def check_items(items: list[Any], *, batch: bool, now_ms: int | None = None) -> tuple[list[dict[str, Any]], list[ItemError]]:
    """Complete and validate every item: (the completed items, every problem found).

    A missing `request_id` gets a new one (then a retry is not idempotent: send your
    own ids), a missing `requested_at` is now. Ids must be unique within a batch.
    An item that is not an object is kept as {} so indexes stay aligned.
    """
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    errors: list[ItemError] = []
    requests: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(ItemError(i, item_path(i, "", batch), "must be a JSON object with the request fields"))
            requests.append({})
            continue
        item = dict(item)
        if item.get("request_id") is None:
            item["request_id"] = uuid.uuid4().hex
        if item.get("requested_at") is None:
            item["requested_at"] = now_ms
        record, found = check_request(item)
        errors.extend(ItemError(i, item_path(i, e.field, batch), e.message) for e in found)
        request_id = item["request_id"]
        if isinstance(request_id, str) and not any(e.field == "request_id" for e in found):
            if request_id in first_index:
                errors.append(
                    ItemError(i, item_path(i, "request_id", batch),
                              f"repeats {item_path(first_index[request_id], 'request_id', batch)}; "
                              "every request needs its own id")
                )
            else:
                first_index[request_id] = i
        # A valid item is kept as its complete record (defaults filled), which is
        # what gets encoded: it is not checked a second time on the way to Kafka.
        requests.append(record if record is not None else item)
    return requests, errors


def reused_id_errors(requests: list[dict[str, Any]], owners: Mapping[str, str], *, batch: bool) -> list[ItemError]:
    """Ids another site already uses (`owners`: request id -> its site). Their site is not named:
    one tenant learns nothing about another beyond that the id is taken."""
    return [
        ItemError(i, item_path(i, "request_id", batch),
                  f"request id {request['request_id']} is already used by another site; choose another id")
        for i, request in enumerate(requests)
        if owners.get(request["request_id"], request["site_id"]) != request["site_id"]
    ]


class OwnerLookup:
    """request id -> site of its row, for many submissions at once.

    One query at a time: the submissions that ask while it runs share the next one,
    so under load the intake reads ids in few statements, never one per request.
    """

    def __init__(self, fetch: Callable[[list[str]], Awaitable[Mapping[str, str]]]) -> None:
        self._fetch = fetch
        self._waiting: list[tuple[list[str], asyncio.Future]] = []
        self._drainer: asyncio.Future | None = None

    async def owners(self, request_ids: list[str]) -> dict[str, str]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request_ids, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # the submissions of this turn of the loop join this query
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            try:
                found = await self._fetch(sorted({i for ids, _ in waiting for i in ids}))
            except Exception as exc:
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for ids, future in waiting:
                if not future.done():
                    future.set_result({i: found[i] for i in ids if i in found})


def conflict(errors: Sequence[ItemError]) -> IntakeError:
    """409: nothing was accepted, because ids are taken by other sites."""
    shown = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return IntakeError(409, f"nothing was accepted: {shown}", errors=[e.as_dict() for e in errors])


def item_path(i: int, name: str, batch: bool) -> str:
    if not batch:
        return name
    return f"requests[{i}].{name}" if name else f"requests[{i}]"


def site_ids(requests: list[dict[str, Any]]) -> set[str]:
    """The well-formed site ids in a submission (the others already have an error)."""
    return {r["site_id"] for r in requests if isinstance(r.get("site_id"), str) and ID_PATTERN.fullmatch(r["site_id"])}


def unknown_site_errors(requests: list[dict[str, Any]], known: Mapping[str, bool], *, batch: bool) -> list[ItemError]:
    out = []
    for i, request in enumerate(requests):
        site_id = request.get("site_id")
        if isinstance(site_id, str) and site_id in known and not known[site_id]:
            out.append(
                ItemError(
                    i,
                    item_path(i, "site_id", batch),
                    f"site {site_id} is not registered (register it first: blogstream sites add {site_id} --wix-api-key ...)",
                )
            )
    return out
