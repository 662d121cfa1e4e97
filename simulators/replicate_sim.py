"""Replicate predictions API simulator (prefix /replicate), plus the output-file CDN (/replicate/files).

Metering, as Replicate does it: creates count against `create_rpm`, every other
endpoint (get, list, cancel) against `other_rpm`. The ledger counts calls per
endpoint (`endpoints`: arrived, admitted, 429s, 5xx) and bills predictions
(`billing`): a prediction is billed for the time it ran on hardware, from its
start until it succeeded, failed or was canceled (one canceled before it
started costs nothing), and a succeeded one for its images. `other_error_rate`
answers that share of the non-create calls (polls, cancels) with a 5xx.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
from datetime import datetime, timezone
from typing import Any, Optional

from aiohttp import web

from .common import SimContext, json_response, provider_latency, read_json, roll
from .png import dims_for_aspect, make_png
from .window import ProviderLedger, SiteStats, SlidingWindow, max_requests_in_any_window

PREFIX = "/replicate"
ENDPOINTS = ("create", "get", "list", "cancel")  # "create" is metered by create_rpm, the rest by other_rpm
FILE_RE = re.compile(r"^/replicate/files/([a-z0-9]+)\.png$")
FAIL_MESSAGE = "NSFW content detected. Try running it again, or try a different prompt."


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _problem(status: int, title: str, detail: str, **extra: Any) -> dict:
    return {"title": title, "detail": detail, "status": status, **extra}


class Prediction:
    def __init__(self, pid: str, model: str, version: str, input_: dict, site: str, created: float,
                 latency: float, fail: bool, base_url: str):
        self.id = pid
        self.model = model
        self.version = version
        self.input = input_
        self.site = site
        self.created_at = created
        self.started_at = created + min(0.1 * latency, 0.5)
        self.latency = latency
        self.fail = fail
        self.completed_at: Optional[float] = None
        self.status = "starting"
        self.error: Optional[str] = None
        self.file_ids: list[str] = []
        self.done = asyncio.Event()
        self.timer: Optional[asyncio.TimerHandle] = None
        self.base_url = base_url  # http://host:port/replicate


class ReplicateSim:
    name = "replicate"

    def __init__(self, state: SimContext):
        self.state = state
        self.predictions: dict[str, Prediction] = {}
        self.reset()

    def reset(self) -> None:
        for p in getattr(self, "predictions", {}).values():
            if p.timer is not None:
                p.timer.cancel()
            p.done.set()
        self.windows = {"create": SlidingWindow(), "other": SlidingWindow()}
        self.ledger = ProviderLedger()
        self.ledger.extra.update(predictions_created=0, predictions_succeeded=0, predictions_failed=0,
                                 predictions_canceled=0, files_served=0, files_not_found=0, sync_requests=0)
        self.endpoints = {name: {"calls": 0, "admitted": 0, "rejected_429": 0, "errors_5xx": 0}
                          for name in ENDPOINTS}
        self.predictions = {}
        self.files: dict[str, tuple[str, int, int, str]] = {}   # fid -> (prediction id, w, h, seed)
        self._png_cache: dict[str, bytes] = {}

    @property
    def cfg(self) -> dict:
        return self.state.config["replicate"]

    # -- helpers ---------------------------------------------------------------------------------
    def _new_id(self, n: int = 26) -> str:
        alphabet = string.ascii_lowercase + "234567"
        return "".join(self.state.rng.choice(alphabet) for _ in range(n))

    def _expired(self, p: Prediction) -> bool:
        if p.completed_at is None or p.status != "succeeded":
            return False
        return self.state.now() >= p.completed_at + float(self.cfg["output_ttl_seconds"])

    def file_available(self, fid: str) -> bool:
        """Used by the Wix simulator: is this output file still downloadable?"""
        rec = self.files.get(fid)
        if rec is None:
            return False
        p = self.predictions.get(rec[0])
        return p is not None and p.status == "succeeded" and not self._expired(p)

    def file_id_from_url(self, url: str) -> Optional[str]:
        from urllib.parse import urlsplit
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        m = FILE_RE.match(parts.path or "")
        return m.group(1) if m else None

    def pred_json(self, p: Prediction) -> dict:
        now = self.state.now()
        status = p.status
        if status == "starting" and now >= p.started_at:
            status = "processing"
        expired = self._expired(p)
        output = None
        if status == "succeeded" and not expired:
            output = [f"{p.base_url}/files/{fid}.png" for fid in p.file_ids]
        metrics: dict[str, Any] = {}
        if p.completed_at is not None:
            metrics = {"predict_time": round(p.completed_at - p.started_at, 3),
                       "total_time": round(p.completed_at - p.created_at, 3)}
        base = p.base_url
        return {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": p.input,
            "logs": "" if status in ("starting",) else "Using seed: 1234\nrunning prediction\n",
            "output": output,
            "data_removed": expired,
            "error": p.error,
            "status": status,
            "created_at": _iso(p.created_at),
            "started_at": _iso(p.started_at) if status != "starting" else None,
            "completed_at": _iso(p.completed_at),
            "urls": {
                "cancel": f"{base}/v1/predictions/{p.id}/cancel",
                "get": f"{base}/v1/predictions/{p.id}",
                "stream": f"{base}/v1/predictions/{p.id}/stream",
                "web": f"https://replicate.com/p/{p.id}",
            },
            "metrics": metrics,
        }

    def _finish(self, p: Prediction, site_stats: SiteStats) -> None:
        if p.status in ("succeeded", "failed", "canceled"):
            return
        p.completed_at = self.state.now()
        if p.fail:
            p.status = "failed"
            p.error = FAIL_MESSAGE
            self.ledger.extra["predictions_failed"] += 1
        else:
            p.status = "succeeded"
            n = p.input.get("num_outputs", 1)
            n = min(4, max(1, n)) if isinstance(n, int) and not isinstance(n, bool) else 1
            w, h = dims_for_aspect(p.input.get("aspect_ratio"))
            for i in range(n):
                fid = self._new_id(32)
                self.files[fid] = (p.id, w, h, f"{p.input.get('prompt', '')}|{i}")
                p.file_ids.append(fid)
            self.ledger.extra["predictions_succeeded"] += 1
        site_stats.end()
        p.done.set()

    # -- admission -------------------------------------------------------------------------------
    def _admit(self, kind: str, site: str, external: bool = False) -> tuple[bool, float]:
        now = self.state.now()
        w = self.state.window_seconds
        limit = int(self.cfg["create_rpm"] if kind == "create" else self.cfg["other_rpm"])
        win = self.windows[kind]
        dec = win.check(now, w, limit)
        if not dec.ok:
            return False, dec.retry_after
        ent = win.add(now, 0, external, site)
        self.ledger.record_admission(kind, win, ent, now, w, self.state.max_events)
        return True, 0.0

    def external_tick(self) -> None:
        ok, _ = self._admit("create", "_external", True)
        if ok:
            self.ledger.external_admitted += 1
        else:
            self.ledger.external_rejected += 1

    def _throttled(self, retry_after: float) -> web.Response:
        secs = max(1, math.ceil(retry_after))
        return json_response(_problem(429, "Request was throttled",
                                      f"Request was throttled. Your rate limit resets in ~{secs}s."),
                             429, {"retry-after": str(secs)})

    async def _gate(self, request: web.Request, endpoint: str) -> tuple[Optional[web.Response], str, SiteStats]:
        """Auth, rate limit and fault injection. Returns (error response or None, site, site stats)."""
        kind = "create" if endpoint == "create" else "other"
        counts = self.endpoints[endpoint]
        counts["calls"] += 1
        led = self.ledger
        led.calls += 1
        site = request.headers.get("x-sim-site") or "-"
        auth = request.headers.get("Authorization", "")
        if self.cfg.get("require_auth", True) and not re.match(r"^(Bearer|Token) \S+", auth):
            led.rejected_4xx += 1
            return json_response(_problem(401, "Unauthenticated",
                                          "You did not pass a valid authentication token"), 401), site, led.site(site)
        st = led.site(site)
        st.calls += 1
        ok, retry_after = self._admit(kind, site)
        if not ok:
            led.reject(kind)
            st.rejected_429 += 1
            counts["rejected_429"] += 1
            return self._throttled(retry_after), site, st
        led.admitted += 1
        st.admitted += 1
        counts["admitted"] += 1
        error_rate = self.cfg.get("error_rate", 0)
        if kind == "other":
            error_rate = max(error_rate, self.cfg.get("other_error_rate", 0))
        if roll(self.state.rng, error_rate):
            status = self.state.rng.choice(self.cfg.get("error_statuses", [500, 503]))
            counts["errors_5xx"] += 1
            led.errors_5xx += 1
            st.errors_5xx += 1
            title = "Internal Server Error" if status == 500 else "Service Unavailable"
            return json_response(_problem(status, title, "An unexpected error occurred. Please try again."),
                                 status), site, st
        return None, site, st

    def _base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}{PREFIX}"

    # -- handlers -------------------------------------------------------------------------------
    async def create_for_model(self, request: web.Request) -> web.Response:
        owner, name = request.match_info["owner"], request.match_info["name"]
        return await self._create(request, f"{owner}/{name}", None)

    async def create_for_deployment(self, request: web.Request) -> web.Response:
        owner, name = request.match_info["owner"], request.match_info["name"]
        return await self._create(request, f"{owner}/{name}", "deployment")

    async def create(self, request: web.Request) -> web.Response:
        return await self._create(request, None, None)

    async def _create(self, request: web.Request, model: Optional[str], kind: Optional[str]) -> web.Response:
        err, site, st = await self._gate(request, "create")
        if err is not None:
            return err
        body, jerr = await read_json(request)
        if jerr or not isinstance(body, dict):
            self.ledger.rejected_4xx += 1
            return json_response(_problem(400, "Bad Request", jerr or "body must be a JSON object"), 400)
        version = "hidden"
        if model is None:
            v = body.get("version")
            if not isinstance(v, str) or not v:
                self.ledger.rejected_4xx += 1
                return json_response(_problem(422, "Input validation failed", "- version: version is required",
                                              invalid_fields=[{"type": "required", "field": "version",
                                                               "description": "version is required"}]), 422)
            if ":" in v:
                model, version = v.split(":", 1)
            elif "/" in v:
                model, version = v, "hidden"
            else:
                model, version = "unknown/unknown", v
        inp = body.get("input")
        if not isinstance(inp, dict) or not isinstance(inp.get("prompt"), str) or not inp["prompt"].strip():
            self.ledger.rejected_4xx += 1
            return json_response(_problem(422, "Input validation failed", "- input: prompt is required",
                                          invalid_fields=[{"type": "required", "field": "input.prompt",
                                                           "description": "prompt is required"}]), 422)
        state = self.state
        latency = provider_latency(state.rng, self.cfg, self.cfg["latency"], state.latency_scale)
        fail = roll(state.rng, self.cfg.get("fail_rate", 0))
        p = Prediction(self._new_id(), model, version, inp, site, state.now(), latency, fail,
                       self._base_url(request))
        self.predictions[p.id] = p
        self.ledger.extra["predictions_created"] += 1
        st.start()
        loop = asyncio.get_running_loop()
        p.timer = loop.call_later(latency, self._finish, p, st)

        wait = self._prefer_wait(request.headers.get("Prefer", ""))
        if wait:
            self.ledger.extra["sync_requests"] += 1
            try:
                await asyncio.wait_for(asyncio.shield(p.done.wait()), timeout=wait)
            except asyncio.TimeoutError:
                pass
        return json_response(self.pred_json(p), 201)

    def _prefer_wait(self, header: str) -> Optional[float]:
        m = re.search(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?:$|[,;\s])", header or "")
        if not m:
            return None
        max_wait = float(self.cfg.get("max_wait_seconds", 60))
        val = float(m.group(1)) if m.group(1) else max_wait
        return max(1.0, min(val, max_wait))

    async def _find(self, request: web.Request, endpoint: str) -> tuple[web.Response | None, Any]:
        """(error answer, prediction): the gate for a call on one prediction, then the look-up."""
        err, _, _ = await self._gate(request, endpoint)
        if err is not None:
            return err, None
        p = self.predictions.get(request.match_info["id"])
        if p is None:
            return json_response(_problem(404, "Not found", "Not found."), 404), None
        return None, p

    async def get_prediction(self, request: web.Request) -> web.Response:
        err, p = await self._find(request, "get")
        return err or json_response(self.pred_json(p))

    async def cancel_prediction(self, request: web.Request) -> web.Response:
        err, p = await self._find(request, "cancel")
        if err is not None:
            return err
        if p.status not in ("succeeded", "failed", "canceled"):
            if p.timer is not None:
                p.timer.cancel()
            p.status = "canceled"
            p.completed_at = self.state.now()
            self.ledger.extra["predictions_canceled"] += 1
            self.ledger.site(p.site).end()
            p.done.set()
        return json_response(self.pred_json(p))

    async def list_predictions(self, request: web.Request) -> web.Response:
        err, _, _ = await self._gate(request, "list")
        if err is not None:
            return err
        preds = sorted(self.predictions.values(), key=lambda p: p.created_at, reverse=True)[:100]
        return json_response({"next": None, "previous": None, "results": [self.pred_json(p) for p in preds]})

    async def get_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        fid = name[:-4] if name.endswith(".png") else None
        if fid is None or not self.file_available(fid):
            self.ledger.extra["files_not_found"] += 1
            return web.Response(status=404, text="Not Found", content_type="text/plain")
        _, w, h, seed = self.files[fid]
        data = self._png_cache.get(fid)
        if data is None:
            data = self._png_cache[fid] = make_png(w, h, seed)
        self.ledger.extra["files_served"] += 1
        return web.Response(body=data, content_type="image/png",
                            headers={"Cache-Control": "public, max-age=3600"})

    # -- billing --------------------------------------------------------------------------------
    def billed_seconds(self, p: Prediction) -> float:
        """Hardware time a prediction is billed for: from its start until it ended (or now, while it runs)."""
        end = p.completed_at if p.completed_at is not None else self.state.now()
        return max(0.0, end - p.started_at)

    def billed_usd(self, p: Prediction, seconds: float) -> float:
        """A per-image model bills the images a prediction made (a failed or canceled one made none);
        any other model the seconds it ran on hardware."""
        price = (self.cfg.get("prices") or {}).get(p.model)
        if price is not None and "per_image" in price:
            return len(p.file_ids) * float(price["per_image"]) if p.status == "succeeded" else 0.0
        per_second = float(price["per_second"]) if price else float(self.cfg.get("per_second_default", 0))
        return round(seconds, 3) * per_second

    def billing(self) -> dict:
        billed = {pid: self.billed_seconds(p) for pid, p in self.predictions.items()}
        usd = {pid: self.billed_usd(p, billed[pid]) for pid, p in self.predictions.items()}
        per_site: dict[str, dict[str, float]] = {}
        for p in self.predictions.values():
            site = per_site.setdefault(p.site, {"predictions": 0, "seconds": 0.0, "images": 0, "usd": 0.0})
            if billed[p.id] > 0:
                site["predictions"] += 1
                site["seconds"] = round(site["seconds"] + billed[p.id], 3)
            if p.status == "succeeded":
                site["images"] += len(p.file_ids)
            site["usd"] += usd[p.id]
        return {
            "usd": sum(usd.values()),
            "predictions": sum(1 for v in billed.values() if v > 0),  # every one that ran, for any time
            "seconds": round(sum(billed.values()), 3),
            "images": sum(len(p.file_ids) for p in self.predictions.values() if p.status == "succeeded"),
            "canceled_after_start": sum(1 for p in self.predictions.values()
                                        if p.status == "canceled" and billed[p.id] > 0),
            "per_site": per_site,
        }

    # -- ledger ---------------------------------------------------------------------------------
    def ledger_json(self) -> dict:
        led = self.ledger
        now = self.state.now()
        w = self.state.window_seconds
        return {
            "calls": led.calls,
            "admitted": led.admitted,
            "rejected_429": led.rejected_429,
            "rejected_429_by_window": dict(led.rejected_by_reason),
            "rejected_4xx": led.rejected_4xx,
            "errors_5xx": led.errors_5xx,
            "external_admitted": led.external_admitted,
            "external_rejected": led.external_rejected,
            "max_requests_in_window": led.max_requests_in_window.get("create", 0),
            "max_requests_in_window_other": led.max_requests_in_window.get("other", 0),
            "max_requests_in_window_recomputed": max_requests_in_any_window(led.events.get("create", []), w),
            "current_requests_in_window": self.windows["create"].count(now, w),
            "current_requests_in_window_other": self.windows["other"].count(now, w),
            "predictions_in_progress": sum(1 for p in self.predictions.values()
                                           if p.status not in ("succeeded", "failed", "canceled")),
            **led.extra,
            "endpoints": {name: dict(counts) for name, counts in self.endpoints.items()},
            "billing": self.billing(),
            "limits": {"create_rpm": self.cfg["create_rpm"], "other_rpm": self.cfg["other_rpm"],
                       "window_seconds": w, "output_ttl_seconds": self.cfg["output_ttl_seconds"]},
            "per_site": {k: {f: v for f, v in vars(st).items() if f not in ("max_requests_in_window", "tokens_settled")}
                         for k, st in led.per_site.items()},
        }

    def events(self, since: float, window: Optional[str] = None) -> list:
        return [e.as_event() for e in self.ledger.events.get(window or "create", []) if e.t >= since]

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post(PREFIX + "/v1/models/{owner}/{name}/predictions", self.create_for_model)
        r.add_post(PREFIX + "/v1/deployments/{owner}/{name}/predictions", self.create_for_deployment)
        r.add_post(PREFIX + "/v1/predictions", self.create)
        r.add_get(PREFIX + "/v1/predictions", self.list_predictions)
        r.add_get(PREFIX + "/v1/predictions/{id}", self.get_prediction)
        r.add_post(PREFIX + "/v1/predictions/{id}/cancel", self.cancel_prediction)
        r.add_get(PREFIX + "/files/{name}", self.get_file)
