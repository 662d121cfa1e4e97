"""Wix REST simulator (prefix /wix): Media Manager import + Blog v3 draft posts / posts."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

from aiohttp import web

from .common import SimContext, json_response, provider_latency, read_json, roll, sample_latency, sleep
from .content import slugify
from .replicate_sim import ReplicateSim
from .window import ProviderLedger, SlidingWindow
from .wix_query import match_filter

PREFIX = "/wix"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int((ts % 1) * 1000):03d}Z"


def app_error(message: str, code: str, description: Optional[str] = None, data: Optional[dict] = None) -> dict:
    return {"message": message,
            "details": {"applicationError": {"code": code, "description": description or message,
                                             "data": data or {}}}}


def validation_error(field: str, description: str, rule: str = "REQUIRED_FIELD") -> dict:
    return {"message": f"INVALID_ARGUMENT: {field} {description}",
            "details": {"validationError": {"fieldViolations": [
                {"field": field, "description": description, "violatedRule": rule}]}}}


class WixSite:
    def __init__(self, site_id: str):
        self.site_id = site_id
        self.window = SlidingWindow()
        self.drafts: dict[str, dict] = {}
        self.posts: dict[str, dict] = {}            # post id -> post
        self.posts_by_slug: dict[str, str] = {}     # actual slug -> post id
        self.requested_slug_counts: dict[str, int] = {}
        self.files: dict[str, dict] = {}
        self.published_at: dict[str, float] = {}    # post id -> when it was published (Query Posts' index lags it)


class WixSim:
    name = "wix"

    def __init__(self, state: SimContext, replicate: ReplicateSim):
        self.state = state
        self.replicate = replicate  # its files are what an image import may download
        self.reset()

    def reset(self) -> None:
        self.sites: dict[str, WixSite] = {}
        self.ledger = ProviderLedger()
        self.ledger.extra.update(imports_total=0, imports_failed=0, drafts_created=0, posts_total=0,
                                 publish_calls=0, bulk_create_calls=0, bulk_import_calls=0,
                                 bulk_items_failed=0, answers_lost=0)

    @property
    def cfg(self) -> dict:
        return self.state.config["wix"]

    def site(self, site_id: str) -> WixSite:
        s = self.sites.get(site_id)
        if s is None:
            s = self.sites[site_id] = WixSite(site_id)
        return s

    # -- admission --------------------------------------------------------------------------------
    def _admit(self, site: WixSite, external: bool) -> tuple[bool, float]:
        now = self.state.now()
        w = self.state.window_seconds
        dec = site.window.check(now, w, int(self.cfg["site_rpm"]))
        if not dec.ok:
            return False, dec.retry_after
        ent = site.window.add(now, 0, external, site.site_id)
        st = self.ledger.site(site.site_id)
        self.ledger.record_admission("requests", site.window, ent, now, w, self.state.max_events, st)
        return True, 0.0

    def external_tick(self) -> None:
        targets = list(self.cfg.get("external_sites") or []) or list(self.sites)
        for sid in targets:
            ok, _ = self._admit(self.site(str(sid)), True)
            if ok:
                self.ledger.external_admitted += 1
            else:
                self.ledger.external_rejected += 1

    def _wrap(self, latency_key: str, fn: Callable[[web.Request, WixSite, Any], Awaitable[web.Response]],
              needs_body: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            led = self.ledger
            led.calls += 1
            if not request.headers.get("Authorization", "").strip():
                led.rejected_4xx += 1
                return json_response(app_error("UNAUTHENTICATED: missing Authorization header", "UNAUTHENTICATED"),
                                     401)
            site_id = request.headers.get("wix-site-id", "").strip()
            if not site_id:
                led.rejected_4xx += 1
                return json_response(app_error("PERMISSION_DENIED: missing wix-site-id header", "PERMISSION_DENIED",
                                               "This request requires a wix-site-id header"), 403)
            site = self.site(site_id)
            st = led.site(site_id)
            st.calls += 1
            ok, retry_after = self._admit(site, False)
            if not ok:
                led.reject("requests")
                st.rejected_429 += 1
                secs = max(1, math.ceil(retry_after))
                return json_response(app_error("RESOURCE_EXHAUSTED: Too many requests", "RATE_LIMIT_EXCEEDED",
                                               f"Rate limit exceeded for site {site_id}. "
                                               f"Try again in {secs} seconds.",
                                               {"retryAfterSeconds": secs}),
                                     429, {"retry-after": str(secs)})
            led.admitted += 1
            st.admitted += 1
            st.start()
            try:
                state = self.state
                latency = provider_latency(state.rng, self.cfg, self.cfg[latency_key], state.latency_scale)
                fault = roll(state.rng, self.cfg.get("error_rate", 0))
                fault_status = state.rng.choice(self.cfg.get("error_statuses", [500, 503])) if fault else 0
                await sleep(latency)
                if fault:
                    led.errors_5xx += 1
                    st.errors_5xx += 1
                    code = "INTERNAL_ERROR" if fault_status == 500 else "UNAVAILABLE"
                    return json_response(app_error(f"{code}: internal error, request id {uuid.uuid4()}", code),
                                         fault_status)
                body = None
                if needs_body:
                    body, err = await read_json(request)
                    if err or not isinstance(body, dict):
                        led.rejected_4xx += 1
                        return json_response({"message": f"INVALID_ARGUMENT: {err or 'body must be an object'}",
                                              "details": {}}, 400)
                resp = await fn(request, site, body)
                if 400 <= resp.status < 500:
                    led.rejected_4xx += 1
                if resp.status < 400 and roll(state.rng, self.cfg.get("lost_answer_rate", 0)):
                    # Done on Wix, but the answer is lost on the way back: the caller cannot tell.
                    led.extra["answers_lost"] += 1
                    return json_response({"message": "DEADLINE_EXCEEDED: upstream request timeout", "details": {}},
                                         504)
                return resp
            finally:
                st.end()
        return handler

    # -- media -----------------------------------------------------------------------------------
    def _import(self, site: WixSite, body: Any, host: str) -> tuple[Optional[dict], Optional[dict]]:
        """One file imported from ``body`` (an import request), or the error that refuses it."""
        self.ledger.extra["imports_total"] += 1
        if not isinstance(body, dict):
            return None, validation_error("importFileRequest", "must be an object", "TYPE")
        url = body.get("url")
        if not isinstance(url, str) or not url.strip():
            return None, validation_error("url", "must not be empty")
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            return None, validation_error("url", "must be a valid URL", "FORMAT")
        # As on Wix, the file is downloaded after the answer (which says PENDING): a source that cannot be
        # downloaded (an expired or unknown Replicate output) makes the file FAILED, not the import call.
        rep = self.replicate
        fid = rep.file_id_from_url(url)
        is_sim_host = (parts.hostname or "") in LOOPBACK or parts.netloc == host
        fails = fid is not None and is_sim_host and not rep.file_available(fid)
        self.ledger.extra["imports_failed"] += fails
        media_type = body.get("mediaType") or "IMAGE"
        now = self.state.now()
        wid = uuid.uuid4().hex[:6] + "_" + uuid.uuid4().hex + "~mv2.png"
        static = f"https://static.wixstatic.com/media/{wid}"
        f = {
            "id": wid,
            "displayName": body.get("displayName") or (parts.path.rsplit("/", 1)[-1] or "file"),
            "url": static,
            "parentFolderId": body.get("parentFolderId") or "media-root",
            "hash": uuid.uuid5(uuid.NAMESPACE_URL, url).hex,
            "sizeInBytes": "4096",
            "private": False,
            "mediaType": media_type,
            "media": {"image": {"image": {"id": wid, "url": static, "height": 576, "width": 1024,
                                          "filename": wid}}} if media_type == "IMAGE" else {},
            "operationStatus": "PENDING",
            "sourceUrl": url,
            "labels": [],
            "createdDate": _iso(now),
            "updatedDate": _iso(now),
            "siteId": site.site_id,
            "_ready_at": now + sample_latency(self.state.rng, self.cfg["latency_file_ready"], self.state.latency_scale),
            "_fails": fails,
        }
        site.files[wid] = f
        return self._public_file(f), None

    def _public_file(self, f: dict) -> dict:
        """A file as Wix shows it now: PENDING until it is processed, then READY, or FAILED without media."""
        shown = {k: v for k, v in f.items() if not k.startswith("_")}
        if self.state.now() < f["_ready_at"]:
            return shown
        if f["_fails"]:
            shown.pop("media", None)
            return {**shown, "operationStatus": "FAILED"}
        return {**shown, "operationStatus": "READY"}

    @staticmethod
    def file_failed(site: WixSite, file_id: Any) -> bool:
        """Whether a post's cover is a file this site does not have, or one whose import fails (or failed)."""
        f = site.files.get(file_id) if isinstance(file_id, str) else None
        return f is None or f["_fails"]

    async def import_file(self, request: web.Request, site: WixSite, body: dict) -> web.Response:
        f, error = self._import(site, body, request.host)
        if f is None:
            return json_response(error, 400)
        return json_response({"file": f})

    async def bulk_import_files(self, request: web.Request, site: WixSite, body: dict) -> web.Response:
        """Bulk Import File (``import-v2``): one call for up to ``bulk_max_items`` files, a result per item.

        As on Wix the answer is 200 when some items fail; ``media`` is not returned in bulk results.
        """
        items = body.get("importFileRequests")
        bad = self._bulk_size_error("importFileRequests", items)
        if bad is not None:
            return bad
        self.ledger.extra["bulk_import_calls"] += 1
        results = []
        for i, item in enumerate(items):
            f, error = self._bulk_item_fault() or self._import(site, item, request.host)
            if f is None:
                self.ledger.extra["bulk_items_failed"] += 1
                results.append({"itemMetadata": {"id": None, "originalIndex": i, "success": False,
                                                 "error": _item_error(error or {})}})
                continue
            entry: dict[str, Any] = {"itemMetadata": {"id": f["id"], "originalIndex": i, "success": True,
                                                      "error": None}}
            if body.get("returnEntity", True) is not False:
                entry["item"] = {k: v for k, v in f.items() if k != "media"}
            results.append(entry)
        return self._bulk_answer(results)

    def _bulk_size_error(self, field: str, items: Any) -> Optional[web.Response]:
        most = int(self.cfg["bulk_max_items"])
        if not isinstance(items, list) or not items:
            return json_response(validation_error(field, "must not be empty"), 400)
        if len(items) > most:
            return json_response(validation_error(field, f"must contain at most {most} items", "MAX_SIZE"), 400)
        return None

    def _bulk_item_fault(self) -> Optional[tuple[None, dict]]:
        """A share (``bulk_item_error_rate``) of bulk items fails inside a 200 answer, as a transient error."""
        if not roll(self.state.rng, self.cfg.get("bulk_item_error_rate", 0)):
            return None
        return None, app_error(f"INTERNAL_ERROR: internal error, request id {uuid.uuid4()}", "INTERNAL_ERROR")

    @staticmethod
    def _bulk_answer(results: list[dict]) -> web.Response:
        ok = sum(r["itemMetadata"]["success"] for r in results)
        return json_response({"results": results,
                              "bulkActionMetadata": {"totalSuccesses": ok, "totalFailures": len(results) - ok,
                                                     "undetailedFailures": 0}})

    async def get_file(self, request: web.Request, site: WixSite, body: Any) -> web.Response:
        f = site.files.get(request.match_info["id"])
        if f is None:
            return json_response(app_error("NOT_FOUND: file not found", "FILE_NOT_FOUND"), 404)
        return json_response({"file": self._public_file(f)})

    async def get_files(self, request: web.Request, site: WixSite, body: dict) -> web.Response:
        """Get File Descriptors: the files of ``fileIds`` this site has (unknown ids are left out)."""
        ids = body.get("fileIds")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return json_response(validation_error("fileIds", "must be a non-empty list of file ids"), 400)
        return json_response({"files": [self._public_file(site.files[i]) for i in ids if i in site.files]})

    # -- blog -------------------------------------------------------------------------------------
    def _url(self, site: WixSite, slug: str) -> dict:
        return {"base": self.cfg["site_url_template"].format(site=site.site_id), "path": f"/post/{slug}"}

    def _publish(self, site: WixSite, draft: dict) -> str:
        now = self.state.now()
        self.ledger.extra["publish_calls"] += 1
        pid = draft["id"]
        post = site.posts.get(pid)
        if post is None:
            requested = draft["seoSlug"]
            slug = requested
            n = 1
            while slug in site.posts_by_slug:       # Wix keeps slugs unique per site
                slug = f"{requested}-{n}"
                n += 1
            site.requested_slug_counts[requested] = site.requested_slug_counts.get(requested, 0) + 1
            post = {
                "id": pid,
                "title": draft["title"],
                "excerpt": draft.get("excerpt", ""),
                "slug": slug,
                "url": self._url(site, slug),
                "memberId": draft.get("memberId"),
                "hashtags": draft.get("hashtags", []),
                "media": draft.get("media"),
                "firstPublishedDate": _iso(now),
                "lastPublishedDate": _iso(now),
                "featured": False,
                "pinned": False,
                "minutesToRead": max(1, draft.get("_words", 0) // 200),
                "commentingEnabled": True,
                "categoryIds": draft.get("categoryIds", []),
                "language": draft.get("language", "en"),
            }
            post = {k: v for k, v in post.items() if v is not None}
            site.posts[pid] = post
            site.posts_by_slug[slug] = pid
            site.published_at[pid] = now
            self.ledger.extra["posts_total"] += 1
        else:
            post["lastPublishedDate"] = _iso(now)
        draft["status"] = "PUBLISHED"
        draft["seoSlug"] = post["slug"]
        draft["url"] = post["url"]
        draft["firstPublishedDate"] = post["firstPublishedDate"]
        draft["hasUnpublishedChanges"] = False
        return pid

    @staticmethod
    def _public_draft(d: dict) -> dict:
        return {k: v for k, v in d.items() if not k.startswith("_")}

    def _new_draft(self, site: WixSite, dp: Any, fieldsets: Any) -> tuple[Optional[dict], Optional[dict]]:
        """A draft from one ``draftPost`` (not stored yet), or the validation error that refuses it."""
        if not isinstance(dp, dict):
            return None, validation_error("draftPost", "must not be empty")
        title = dp.get("title")
        if not isinstance(title, str) or not title.strip():
            return None, validation_error("draftPost.title", "must not be empty")
        rc = dp.get("richContent")
        if not isinstance(rc, dict) or not isinstance(rc.get("nodes"), list):
            return None, validation_error("draftPost.richContent",
                                          "must be a Ricos document object with a 'nodes' array")
        slug = dp.get("seoSlug") or slugify(title)
        if not isinstance(slug, str):
            return None, validation_error("draftPost.seoSlug", "must be a string", "TYPE")
        size = len(json.dumps(dp).encode())
        if size > int(self.cfg["max_post_bytes"]):
            return None, app_error("INVALID_ARGUMENT: draft post too large", "POST_TOO_LARGE",
                                   f"A post is at most {self.cfg['max_post_bytes']} bytes; this one is {size}.")
        if len(site.drafts) >= int(self.cfg["max_posts_per_blog"]):
            return None, app_error("FAILED_PRECONDITION: the blog is full", "MAX_POSTS_REACHED",
                                   f"A blog holds at most {self.cfg['max_posts_per_blog']} posts.")
        now = self.state.now()
        draft = {
            "id": str(uuid.uuid4()),
            "title": title,
            "excerpt": dp.get("excerpt", ""),
            "seoSlug": slug,
            "memberId": dp.get("memberId"),
            "hashtags": dp.get("hashtags", []),
            "media": dp.get("media"),
            "categoryIds": dp.get("categoryIds", []),
            "language": dp.get("language", "en"),
            "status": "UNPUBLISHED",
            "url": self._url(site, slug),
            "createdDate": _iso(now),
            "editedDate": _iso(now),
            "hasUnpublishedChanges": True,
            "_words": _count_words(rc),
        }
        if "richContent" in (fieldsets or []) or "RICH_CONTENT" in (fieldsets or []):
            draft["richContent"] = rc
        return {k: v for k, v in draft.items() if v is not None}, None

    def _store(self, site: WixSite, draft: dict, publish: bool) -> None:
        site.drafts[draft["id"]] = draft
        self.ledger.extra["drafts_created"] += 1
        if publish:
            self._publish(site, draft)

    async def create_draft(self, request: web.Request, site: WixSite, body: dict) -> web.Response:
        draft, error = self._new_draft(site, body.get("draftPost"), body.get("fieldsets"))
        if draft is None:
            return json_response(error, 400)
        self._store(site, draft, body.get("publish") is True)
        return json_response({"draftPost": self._public_draft(draft)})

    async def bulk_create_drafts(self, request: web.Request, site: WixSite, body: dict) -> web.Response:
        """One call (one request of the site's limit) for up to ``bulk_max_items`` drafts; 200 even when some
        items fail, each result saying whether its item was created."""
        items = body.get("draftPosts")
        bad = self._bulk_size_error("draftPosts", items)
        if bad is not None:
            return bad
        self.ledger.extra["bulk_create_calls"] += 1
        full = body.get("returnFullEntity") is True
        results, slugs = [], set()
        for i, dp in enumerate(items):
            draft, error = self._bulk_item_fault() or self._new_draft(
                site, dp, ["RICH_CONTENT"] if full else body.get("fieldsets"))
            if draft is not None and draft["seoSlug"] in slugs:
                draft, error = None, app_error("ALREADY_EXISTS: duplicate slug in this request", "DUPLICATE_SLUG",
                                               f"Another item of this request already has the slug "
                                               f"'{draft['seoSlug']}'.")
            if draft is None:
                self.ledger.extra["bulk_items_failed"] += 1
                results.append({"itemMetadata": {"id": None, "originalIndex": i, "success": False,
                                                 "error": _item_error(error or {})}})
                continue
            slugs.add(draft["seoSlug"])
            self._store(site, draft, body.get("publish") is True)
            results.append({"itemMetadata": {"id": draft["id"], "originalIndex": i, "success": True, "error": None},
                            "item": self._public_draft(draft)})
        return self._bulk_answer(results)

    async def publish_draft(self, request: web.Request, site: WixSite, body: Any) -> web.Response:
        d = site.drafts.get(request.match_info["id"])
        if d is None:
            return json_response(app_error("NOT_FOUND: draft post not found", "DRAFT_POST_NOT_FOUND"), 404)
        return json_response({"postId": self._publish(site, d)})

    async def get_draft(self, request: web.Request, site: WixSite, body: Any) -> web.Response:
        d = site.drafts.get(request.match_info["id"])
        if d is None:
            return json_response(app_error("NOT_FOUND: draft post not found", "DRAFT_POST_NOT_FOUND"), 404)
        return json_response({"draftPost": self._public_draft(d)})

    async def get_post_by_slug(self, request: web.Request, site: WixSite, body: Any) -> web.Response:
        pid = site.posts_by_slug.get(request.match_info["slug"])
        if pid is None:
            return json_response(app_error("NOT_FOUND: post not found", "POST_NOT_FOUND"), 404)
        return json_response({"post": site.posts[pid]})

    async def get_post(self, request: web.Request, site: WixSite, body: Any) -> web.Response:
        p = site.posts.get(request.match_info["id"])
        if p is None:
            return json_response(app_error("NOT_FOUND: post not found", "POST_NOT_FOUND"), 404)
        return json_response({"post": p})

    def _indexed(self, site: WixSite) -> list[dict]:
        """The posts Query and List Posts show: those published at least `query_lag_seconds` ago (they read an
        index that follows the posts; Get Post and Get Post By Slug read the posts themselves)."""
        lag = float(self.cfg.get("query_lag_seconds") or 0.0)
        if lag <= 0:
            return list(site.posts.values())
        seen_before = self.state.now() - lag
        return [p for pid, p in site.posts.items() if site.published_at.get(pid, 0.0) <= seen_before]

    async def list_posts(self, request: web.Request, site: WixSite, body: Any) -> web.Response:
        limit = _int(request.query.get("paging.limit"), 50)
        offset = _int(request.query.get("paging.offset"), 0)
        posts = self._indexed(site)
        page = posts[offset: offset + limit]
        return json_response({"posts": page, "metaData": {"count": len(page), "offset": offset,
                                                          "total": len(posts)}})

    async def query_posts(self, request: web.Request, site: WixSite, body: dict) -> web.Response:
        q = body.get("query") or {}
        filt = q.get("filter") or {}
        paging = q.get("paging") or {}
        limit = _int(paging.get("limit"), 50)
        offset = _int(paging.get("offset"), 0)
        if not isinstance(filt, dict):
            return json_response(validation_error("query.filter", "must be an object", "TYPE"), 400)
        posts = [p for p in self._indexed(site) if match_filter(p, filt)]
        page = posts[offset: offset + limit]
        return json_response({"posts": page, "metaData": {"count": len(page), "offset": offset,
                                                          "total": len(posts)}})

    # -- ledger -----------------------------------------------------------------------------------
    def ledger_json(self) -> dict:
        led = self.ledger
        now = self.state.now()
        w = self.state.window_seconds
        per_site = {}
        dups: dict[str, dict[str, int]] = {}
        for sid, st in led.per_site.items():
            d = vars(st).copy()
            s = self.sites.get(sid)
            if s is not None:
                d["current_requests_in_window"] = s.window.count(now, w)
                d["posts"] = len(s.posts)
                sd = {slug: c for slug, c in s.requested_slug_counts.items() if c > 1}
                if sd:
                    dups[sid] = sd
            per_site[sid] = d
        return {
            "calls": led.calls,
            "admitted": led.admitted,
            "rejected_429": led.rejected_429,
            "rejected_4xx": led.rejected_4xx,
            "errors_5xx": led.errors_5xx,
            "external_admitted": led.external_admitted,
            "external_rejected": led.external_rejected,
            "max_requests_in_window": max((st.max_requests_in_window for st in led.per_site.values()), default=0),
            **led.extra,
            "posts_per_site": {sid: len(s.posts) for sid, s in self.sites.items() if s.posts},
            # Published posts whose cover is no image on the site: its file's import FAILED, or will (or is unknown).
            "posts_with_failed_cover": sum(self.file_failed(s, _cover_id(p)) for s in self.sites.values()
                                           for p in s.posts.values() if p.get("media")),
            "duplicate_slugs": dups,
            "duplicate_posts_total": sum(c - 1 for sd in dups.values() for c in sd.values()),
            "limits": {"site_rpm": self.cfg["site_rpm"], "window_seconds": w},
            "per_site": per_site,
        }

    def events(self, since: float, window: Optional[str] = None) -> list:
        return sorted((e.as_event() for e in self.ledger.events.get("requests", []) if e.t >= since),
                      key=lambda x: x[0])

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post(PREFIX + "/site-media/v1/files/import", self._wrap("latency_import", self.import_file, True))
        r.add_post(PREFIX + "/site-media/v1/bulk/files/import-v2",
                   self._wrap("latency_import", self.bulk_import_files, True))
        r.add_post(PREFIX + "/site-media/v1/files/get-files", self._wrap("latency_other", self.get_files, True))
        r.add_get(PREFIX + "/site-media/v1/files/{id}", self._wrap("latency_other", self.get_file))
        r.add_post(PREFIX + "/blog/v3/draft-posts", self._wrap("latency_create", self.create_draft, True))
        r.add_post(PREFIX + "/blog/v3/bulk/draft-posts/create",
                   self._wrap("latency_create", self.bulk_create_drafts, True))
        r.add_get(PREFIX + "/blog/v3/draft-posts/{id}", self._wrap("latency_other", self.get_draft))
        r.add_post(PREFIX + "/blog/v3/draft-posts/{id}/publish", self._wrap("latency_publish", self.publish_draft))
        r.add_get(PREFIX + "/blog/v3/posts/slugs/{slug}", self._wrap("latency_other", self.get_post_by_slug))
        r.add_post(PREFIX + "/blog/v3/posts/query", self._wrap("latency_other", self.query_posts, True))
        r.add_get(PREFIX + "/blog/v3/posts", self._wrap("latency_other", self.list_posts))
        r.add_get(PREFIX + "/blog/v3/posts/{id}", self._wrap("latency_other", self.get_post))


def _item_error(body: dict) -> dict:
    """A refused bulk item's error, from the body the single create would have answered."""
    details = body.get("details") or {}
    if "applicationError" in details:
        app = details["applicationError"]
        return {"code": app["code"], "description": app["description"], "data": app.get("data") or {}}
    return {"code": "INVALID_ARGUMENT", "description": body.get("message", ""), "data": details}


def _cover_id(post: dict) -> Any:
    media = post.get("media")
    wix_media = media.get("wixMedia") if isinstance(media, dict) else None
    image = wix_media.get("image") if isinstance(wix_media, dict) else None
    return image.get("id") if isinstance(image, dict) else None


def _int(v: Any, default: int) -> int:
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return default


def _count_words(rc: Any) -> int:
    n = 0
    stack = [rc]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            td = x.get("textData")
            if isinstance(td, dict) and isinstance(td.get("text"), str):
                n += len(td["text"].split())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return n
