"""Stored chat completions: `store: true` on a create keeps the completion, with its `metadata`.

As OpenAI does (platform.openai.com/docs/api-reference/chat/list):

- `POST /chat/completions` with `"store": true` keeps the completion it answers; `metadata` is at most 16
  string pairs (keys up to 64 characters, values up to 512), or the create is refused with a 400 (counted
  in the window, as every invalid create is).
- `GET /chat/completions?model=&metadata[k]=v&after=&limit=&order=` lists the stored ones, oldest first
  (`order=desc`: newest first), `limit` 1-100 (default 20), `after` a completion id (the page's cursor):
  `{"object": "list", "data": [...], "first_id", "last_id", "has_more"}`. Each item is the completion
  with its `metadata` (and `request_id`).
- `GET /chat/completions/{id}`: one of them, 404 if none has that id.

OpenAI does not say how soon a stored completion shows in the list: `stored_lag_seconds` leaves out
those stored less than that ago (the read by id sees them at once). The reads are not rate limited
and never in the window; `timeout_rate` and `cut_rate` apply to them like to every call.
"""
from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .common import json_response
from .openai_batches import invalid_request, unauthorized

_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


class StoredCompletions:
    """The completions created with `store: true`, in the order they were made."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.reset()

    def reset(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        # (key, value) -> the items with that metadata pair: a look-up by request id reads a few, not all
        self.by_metadata: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.stored_at: dict[str, float] = {}
        self.reads = 0

    def keep(self, body: dict, completion: dict, request_id: str) -> None:
        if body.get("store") is not True:
            return
        item = {**completion, "metadata": dict(body.get("metadata") or {}), "request_id": request_id}
        self.items.append(item)
        self.by_id[item["id"]] = item
        for pair in item["metadata"].items():
            self.by_metadata.setdefault(pair, []).append(item)
        self.stored_at[item["id"]] = self.sim.state.now()

    def _listed(self, wanted: dict[str, str]) -> list[dict[str, Any]]:
        items = self.by_metadata.get(next(iter(wanted.items())), []) if wanted else self.items
        lag = float(self.sim.cfg.get("stored_lag_seconds") or 0.0)
        if lag <= 0:
            return items
        shown_until = self.sim.state.now() - lag
        return [item for item in items if self.stored_at[item["id"]] <= shown_until]

    async def list(self, request: web.Request) -> web.Response:
        denied = unauthorized(request, self.sim.cfg, self.sim._rid())
        if denied is not None:
            return denied
        self.reads += 1
        query = request.rel_url.query
        wanted = {m.group(1): value for key, value in query.items() if (m := _METADATA_PARAM.match(key))}
        order = query.get("order", "asc")
        if order not in ("asc", "desc"):
            return invalid_request(400, "Invalid value for 'order': expected 'asc' or 'desc'.", param="order")
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            return invalid_request(400, "Invalid type for 'limit': expected an integer.", param="limit")
        if not 1 <= limit <= 100:
            return invalid_request(400, "Invalid 'limit': expected a value between 1 and 100.", param="limit")
        items = [item for item in self._listed(wanted)
                 if ("model" not in query or item["model"] == query["model"])
                 and all(item["metadata"].get(k) == v for k, v in wanted.items())]
        if order == "desc":
            items = items[::-1]
        after = query.get("after")
        if after:
            ids = [item["id"] for item in items]
            if after not in ids:
                return invalid_request(404, f"No chat completion found with id '{after}' to list after.", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return json_response({"object": "list", "data": page,
                              "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None,
                              "has_more": len(items) > limit}, 200)

    async def retrieve(self, request: web.Request) -> web.Response:
        denied = unauthorized(request, self.sim.cfg, self.sim._rid())
        if denied is not None:
            return denied
        self.reads += 1
        item = self.by_id.get(request.match_info["completion_id"])
        if item is None:
            return invalid_request(404, f"No chat completion found with id '{request.match_info['completion_id']}'.")
        return json_response(item, 200)

    def ledger_json(self) -> dict:
        return {"stored": len(self.items), "reads": self.reads}

    def add_routes(self, app: web.Application, prefix: str) -> None:
        app.router.add_get(prefix + "/chat/completions", self.list)
        app.router.add_get(prefix + "/chat/completions/{completion_id}", self.retrieve)

