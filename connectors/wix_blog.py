"""Publishing to Wix Blog: media import, draft post creation (published at once), slug lookup, and their bulk forms.

Each call carries its site's credentials (one pipeline serves many Wix sites),
so the HTTP client is shared and headers are per request. Article text is sent
as Ricos TEXT nodes, never as HTML: whatever markup a customer typed into a
topic is stored, and shown, as literal characters.

Wix has no Python SDK for these REST calls, so this is a plain aiohttp client:
JSON in, an answer read whole (`WixAnswer`) out. Not httpx over aiohttp as
before: httpx's request and URL objects on top of aiohttp's cost 270 us of CPU
per call against the simulator, aiohttp alone about 100 us (docs/bench-capacity.md),
and a blog makes two or three Wix calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .answer_fields import json_object, json_text, read_json
from .closing import AsyncClosing
from .errors import (
    CredentialsUnusable,
    ImageExpired,
    MalformedOutput,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RejectedRequest,
    redact,
)
from .one_attempt import one_attempt_session
from .ratelimit_headers import parse_rate_limit_headers, parse_retry_after
from .wix_ricos import markdown_to_ricos

__all__ = [
    "FILE_FAILED",
    "FILE_PENDING",
    "POST_MAX_BYTES",
    "PublishedPost",
    "SiteCredentials",
    "WixAnswer",
    "WixBlog",
    "WixSite",
    "draft_post",
    "file_status",
    "markdown_to_ricos",
    "post_problem",
]

PROVIDER = "wix"

# Wix's documented field limits; longer values are a permanent 400, so trim instead.
TITLE_MAX_CHARS = 200
EXCERPT_MAX_CHARS = 500
# A post is at most 400 KB (its draftPost as JSON): a long article of short lines is far more as Ricos.
POST_MAX_BYTES = 409_600
# What a post holds beyond its article: the cover's id and URL, the member id, the slug (a few hundred bytes).
POST_OTHER_BYTES = 2_048

# What the import endpoint says when it cannot fetch the source URL (Replicate
# output deleted after ~1 h, or never existed).
_EXPIRED_CODES = frozenset({"URL_NOT_REACHABLE", "URL_NOT_FOUND", "FILE_NOT_FOUND", "DOWNLOAD_FAILED"})
# Bulk item errors that a later call may not meet (as a 5xx would be for a single call).
_TRANSIENT_ITEM_CODES = frozenset({"INTERNAL_ERROR", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNDETAILED_FAILURE"})
_MAYBE_DONE_ITEM_CODES = frozenset({"DEADLINE_EXCEEDED", "UNDETAILED_FAILURE"})  # the item may exist anyway
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what aiohttp refuses in a header value
_EXPIRED_TEXT = re.compile(
    r"unreachable|not reachable|could not (?:download|fetch)|failed to (?:download|fetch|import)|"
    r"404 not found|\bexpired\b|\bgone\b",
    re.I,
)


# A media import is answered before Wix has downloaded the file: its `operationStatus` is PENDING
# until then, READY once it is usable, FAILED when the download failed (the URL is gone or no image).
FILE_PENDING, FILE_FAILED = "PENDING", "FAILED"


def file_status(file: dict[str, Any]) -> str:
    """A Wix file's `operationStatus` (PENDING, READY, FAILED); one that names none is taken as READY."""
    return json_text(file.get("operationStatus")) or "READY"


@runtime_checkable
class WixSite(Protocol):
    """What the connector needs from a row of the `sites` table."""

    @property
    def site_id(self) -> str: ...

    @property
    def wix_api_key(self) -> str: ...

    @property
    def wix_member_id(self) -> str | None: ...


@dataclass(frozen=True)
class SiteCredentials:
    """A ready-made WixSite for scripts and tests (the pipeline passes store.database.Site).

    The API key is kept out of repr() so it never reaches a log line.
    """

    site_id: str
    wix_api_key: str = field(repr=False)
    wix_member_id: str | None = None


@dataclass(frozen=True)
class WixAnswer:
    """One Wix answer, read whole: its status, headers (case-insensitive) and body."""

    status_code: int
    headers: CIMultiDictProxy[str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return read_json(self.content)


@dataclass(frozen=True)
class PublishedPost:
    post_id: str
    url: str
    # The slug Wix actually used: it appends "-1", "-2" ... when the requested one is taken.
    slug: str | None = None


# --------------------------------------------------------------------------- client


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


def _is_file(file: Any) -> bool:
    return isinstance(file, dict) and None not in (json_text(file.get("id")), json_text(file.get("url")))


def _post_url(url: Any) -> str | None:
    # Wix returns {"base": "https://site.wixsite.com/blog", "path": "/post/slug"}.
    if isinstance(url, dict):
        base, path = url.get("base"), url.get("path")
        if isinstance(base, str) and isinstance(path, str) and base:
            return base.rstrip("/") + "/" + path.lstrip("/")
        return None
    if isinstance(url, str) and url:
        return url
    return None


def _slug_from_path(url: Any) -> str | None:
    if isinstance(url, dict) and isinstance(url.get("path"), str):
        return url["path"].rstrip("/").rsplit("/", 1)[-1] or None
    return None


def _published_post(post: Any, answered_by: str, status: int) -> PublishedPost:
    """A published post as Wix describes it (lookup, query), checked: it must have an id and a URL."""
    if not isinstance(post, dict) or json_text(post.get("id")) is None:
        raise MalformedOutput(PROVIDER, f"{answered_by} answered without post.id", status=status)
    url = _post_url(post.get("url"))
    if url is None:
        raise MalformedOutput(PROVIDER, f"post {post['id']} has no url", status=status)
    slug = json_text(post.get("slug")) or _slug_from_path(post.get("url"))
    return PublishedPost(post_id=post["id"], url=url, slug=slug)


@dataclass(frozen=True)
class _WixErrorBody:
    message: str
    code: str | None
    retry_after: float | None


def _parse_error_body(response: WixAnswer) -> _WixErrorBody:
    """Wix errors: {"message", "details": {"applicationError": {"code", "description", "data"}}}
    or {"details": {"validationError": {"fieldViolations": [...]}}}."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:300] if response.text else ""
        return _WixErrorBody(text or f"HTTP {response.status_code}", None, None)
    details = json_object(body.get("details"))
    app_error = json_object(details.get("applicationError"))
    message = str(body.get("message") or app_error.get("description") or f"HTTP {response.status_code}")
    description = app_error.get("description")
    if isinstance(description, str) and description and description not in message:
        message = f"{message} ({description})"
    violations = json_object(details.get("validationError")).get("fieldViolations")
    if isinstance(violations, list) and violations:
        parts = [
            f"{v.get('field')}: {v.get('description')}" for v in violations if isinstance(v, dict) and v.get("field")
        ]
        if parts and not any(p in message for p in parts):
            message = f"{message} [{'; '.join(parts)}]"
    code = app_error.get("code") if isinstance(app_error.get("code"), str) else None
    retry_after = json_object(app_error.get("data")).get("retryAfterSeconds")
    return _WixErrorBody(message, code, float(retry_after) if isinstance(retry_after, (int, float)) else None)


def draft_post(
    site: WixSite,
    *,
    title: str,
    excerpt: str,
    body_markdown: str,
    slug: str,
    tags: Iterable[str],
    image: dict[str, Any] | None,
    image_alt: str,
) -> dict[str, Any]:
    """The `draftPost` body of one post, for `publish_draft` and `create_posts`."""
    draft: dict[str, Any] = {
        "title": _clip(title, TITLE_MAX_CHARS),
        "excerpt": _clip(excerpt, EXCERPT_MAX_CHARS),
        "richContent": markdown_to_ricos(body_markdown),
        "seoSlug": slug,
        "hashtags": list(dict.fromkeys(t for t in tags if t)),
    }
    if site.wix_member_id:
        # Third-party apps must name an author; API keys acting as the site owner may omit it.
        draft["memberId"] = site.wix_member_id
    if image is not None:
        draft["media"] = {
            "wixMedia": {"image": {"id": image["id"], "url": image["url"], "altText": image_alt}},
            "displayed": True,
            "custom": True,
        }
    return draft


def post_problem(*, title: str, excerpt: str, body_markdown: str, tags: Iterable[str], image_alt: str) -> str | None:
    """Why an article would make a post Wix refuses for its size (POST_MAX_BYTES), or None.

    Measured as JSON with every character not ASCII escaped (the larger of the two ways to count it), on
    the Ricos document `draft_post` builds; an article far under the limit (most) is not converted here.
    """
    texts = (title[:TITLE_MAX_CHARS], excerpt[:EXCERPT_MAX_CHARS], body_markdown, image_alt, *tags)
    # An escaped character is at most 12 bytes; each line at most ~250 bytes of nodes, each * ~150 of decorations.
    at_most = 12 * sum(map(len, texts)) + 250 * (body_markdown.count("\n") + 1) + 150 * body_markdown.count("*")
    if at_most + POST_OTHER_BYTES <= POST_MAX_BYTES:
        return None
    post = {"title": _clip(title, TITLE_MAX_CHARS), "excerpt": _clip(excerpt, EXCERPT_MAX_CHARS),
            "richContent": markdown_to_ricos(body_markdown), "hashtags": list(tags), "altText": image_alt}
    size = len(json.dumps(post)) + POST_OTHER_BYTES
    if size <= POST_MAX_BYTES:
        return None
    return (f"makes a Wix post of about {size} bytes, and Wix takes at most {POST_MAX_BYTES} (as rich content each "
            "line, list item or bold phrase costs about 200 bytes: fewer, longer paragraphs fit)")


class WixBlog(AsyncClosing):
    """Wix REST client shared by every site. Create one per worker and reuse it."""

    def __init__(self, *, base_url: str, timeout: float, max_connections: int) -> None:
        self._base = str(URL(base_url.rstrip("/") + "/"))  # normalized once; paths are added already quoted
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the caller's loop

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Answers' Set-Cookie is not read and no Cookie is sent: the key authenticates.
            self._session = one_attempt_session(connections=self._max_connections, timeout=self._timeout,
                                                headers={"Accept": "application/json"})
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- public API -----------------------------------------------------------------

    async def import_image(self, site: WixSite, url: str, *, display_name: str) -> dict[str, Any]:
        """Copy an image into the site's Media Manager; returns Wix's `file` (id, url, ...).

        Raises ImageExpired when Wix cannot download `url` (the caller regenerates it). Wix
        downloads after answering: the file may still be PENDING (`file_status`), and only
        `get_files` later tells whether it became READY or FAILED.
        """
        body = {"url": url, "mediaType": "IMAGE", "displayName": display_name}
        response = await self._request(site, "POST", "site-media/v1/files/import", json_body=body, image_url=url)
        data = self._json(response)
        file = data.get("file")
        if not _is_file(file):
            raise MalformedOutput(
                PROVIDER, "media import answered without file.id / file.url", status=response.status_code
            )
        if file_status(file) == FILE_FAILED:
            raise self.import_failed(site, file, url)
        return file

    async def get_files(self, site: WixSite, file_ids: Sequence[str]) -> list[dict[str, Any] | ProviderError]:
        """Get File Descriptors: the site's files as Wix has them now (an import READY, PENDING or FAILED),
        many in one call. Returns, in order, each file or why it is missing (a ProviderError that may pass)."""
        response = await self._request(site, "POST", "site-media/v1/files/get-files",
                                       json_body={"fileIds": list(file_ids)})
        files = self._json(response).get("files")
        if not isinstance(files, list):
            raise MalformedOutput(PROVIDER, "file look-up answered without files", status=response.status_code)
        by_id = {file["id"]: file for file in files if _is_file(file)}
        return [by_id.get(file_id) or MalformedOutput(
            PROVIDER, f"file look-up for site {site.site_id} answered without file {file_id}",
            status=response.status_code) for file_id in file_ids]

    @staticmethod
    def import_failed(site: WixSite, file: dict[str, Any], url: str) -> ImageExpired:
        """Wix could not download the image of an import (its file FAILED): the caller makes a new image."""
        return ImageExpired(PROVIDER, redact(
            f"media import for site {site.site_id}: file {file.get('id')} FAILED, Wix could not download {url} - "
            "the image URL is gone or is no image; generate a new image", [site.wix_api_key]))

    async def find_post_by_slug(self, site: WixSite, slug: str) -> PublishedPost | None:
        """The published post with this slug, or None. Used to make publishing idempotent."""
        response = await self._request(
            site, "GET", f"blog/v3/posts/slugs/{quote(slug, safe='')}", allow_not_found=True
        )
        if response.status_code == 404:
            return None
        return _published_post(self._json(response).get("post"), "post lookup", response.status_code)

    async def publish_draft(self, site: WixSite, draft: dict[str, Any]) -> PublishedPost:
        """Create a post from a `draft_post(...)` body and publish it in the same call.

        Not idempotent: after a timeout the post may exist, so callers look it
        up by slug before retrying (Wix would otherwise publish a second copy
        under "<slug>-1").
        """
        response = await self._request(
            site, "POST", "blog/v3/draft-posts", json_body={"draftPost": draft, "publish": True}
        )
        post = self._published(site, self._json(response).get("draftPost"), draft["seoSlug"], response.status_code)
        if isinstance(post, ProviderError):
            raise post
        return post

    # -- bulk: one call, one request of the site's budget, for many items --------------

    async def import_images(
        self, site: WixSite, images: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any] | ProviderError]:
        """Bulk Import File: copy many images (url, display name) in one call.

        Returns, in order, each image's Wix `file` or the error that refused it
        (ImageExpired when Wix cannot download that URL). A failed call raises.
        """
        body = {
            "importFileRequests": [{"url": url, "mediaType": "IMAGE", "displayName": name} for url, name in images],
            "returnEntity": True,
        }
        response = await self._request(site, "POST", "site-media/v1/bulk/files/import-v2", json_body=body)
        answers: list[dict[str, Any] | ProviderError] = []
        for (url, _), (file, error) in zip(images, self._bulk_results(response, len(images))):
            if error is not None:
                answers.append(self._item_error(site, "bulk media import", error, image_url=url))
            elif not _is_file(file):
                answers.append(MalformedOutput(PROVIDER, "bulk media import answered an item without id / url"))
            elif file_status(file) == FILE_FAILED:
                answers.append(self.import_failed(site, file, url))
            else:
                answers.append(file)
        return answers

    async def create_posts(
        self, site: WixSite, drafts: Sequence[dict[str, Any]]
    ) -> list[PublishedPost | ProviderError]:
        """Bulk Create Draft Posts, published at once: many posts (`draft_post(...)` bodies) in one call.

        Returns, in order, each post or the error that refused it. Not
        idempotent, like `publish_draft`: after a failed call some posts may
        exist, so callers look them up (`find_posts_by_slugs`) before trying again.
        """
        response = await self._request(
            site, "POST", "blog/v3/bulk/draft-posts/create", json_body={"draftPosts": list(drafts), "publish": True}
        )
        answers: list[PublishedPost | ProviderError] = []
        for draft, (created, error) in zip(drafts, self._bulk_results(response, len(drafts))):
            if error is not None:
                answers.append(self._item_error(site, "bulk post create", error))
            else:
                answers.append(self._published(site, created, draft["seoSlug"], response.status_code))
        return answers

    async def find_posts_by_slugs(self, site: WixSite, slugs: Sequence[str]) -> dict[str, PublishedPost]:
        """The published posts with these slugs (at most 100), by slug: one Query Posts call."""
        query = {"query": {"filter": {"slug": {"$in": list(slugs)}}, "paging": {"limit": 100}}}
        response = await self._request(site, "POST", "blog/v3/posts/query", json_body=query)
        posts = self._json(response).get("posts")
        if not isinstance(posts, list):
            raise MalformedOutput(PROVIDER, "post query answered without posts", status=response.status_code)
        found = (_published_post(post, "post query", response.status_code) for post in posts)
        return {str(post.slug): post for post in found}

    def _bulk_results(
        self, response: WixAnswer, count: int
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """(item, None) or ({}, error) per item in request order; an item Wix left out failed without details."""
        results = self._json(response).get("results")
        if not isinstance(results, list):
            raise MalformedOutput(PROVIDER, "bulk call answered without results", status=response.status_code)
        by_index: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        for result in results:
            meta = json_object(json_object(result).get("itemMetadata"))
            index = meta.get("originalIndex")
            if not isinstance(index, int) or not 0 <= index < count:
                continue
            if meta.get("success") is True:
                by_index[index] = (json_object(result.get("item")), None)
            else:
                by_index[index] = ({}, json_object(meta.get("error")))
        missing = {"code": "UNDETAILED_FAILURE", "description": "Wix answered no result for this item"}
        return [by_index.get(i, ({}, missing)) for i in range(count)]

    def _item_error(
        self, site: WixSite, action: str, error: dict[str, Any], *, image_url: str | None = None
    ) -> ProviderError:
        """A bulk item's error as the single call's would be: transient, expired image, or permanent."""
        code = error.get("code") if isinstance(error.get("code"), str) else "UNKNOWN"
        description = str(error.get("description") or "")
        text = redact(f"{action} for site {site.site_id}: {code}: {description}", [site.wix_api_key])
        if code in _TRANSIENT_ITEM_CODES:
            error: ProviderError = ProviderUnavailable(PROVIDER, text)
        elif image_url is not None and (code in _EXPIRED_CODES or _EXPIRED_TEXT.search(description)):
            error = ImageExpired(PROVIDER, f"{text} - the image URL is gone; generate a new image")
        else:
            error = RejectedRequest(PROVIDER, text)
        # Wix answered the call and said this item failed: nothing was made for it. Not for an item it left out
        # of its answer, nor one whose time ran out: that one may have been made all the same.
        error.done_nothing = code not in _MAYBE_DONE_ITEM_CODES
        return error

    def _published(self, site: WixSite, created: Any, slug: str, status: int) -> PublishedPost | ProviderError:
        if not isinstance(created, dict) or json_text(created.get("id")) is None:
            return MalformedOutput(PROVIDER, "draft post answered without draftPost.id", status=status)
        url = _post_url(created.get("url"))
        if url is None:
            # The post exists, but its URL must be asked for: a call of its own, with its own permit. Passing
            # (retryable): the caller's next try looks the post up by its slug before any create.
            return ProviderUnavailable(PROVIDER, f"post {created['id']} for site {site.site_id} was created, but Wix "
                                       "answered without its url: it is looked up by its slug", status=status)
        return PublishedPost(
            post_id=created["id"],
            url=url,
            slug=json_text(created.get("seoSlug")) or _slug_from_path(created.get("url")) or slug,
        )

    # -- plumbing -------------------------------------------------------------------

    def _headers(self, site: WixSite) -> dict[str, str]:
        # aiohttp refuses these in a header (ValueError, not a ProviderError): a key saved with CRLF failed
        # every call of its site as a fault of ours, four tries a post, never saying to fix the key.
        for value, what in ((site.wix_api_key, "wix_api_key"), (site.site_id, "site id")):
            if value and _UNSENDABLE.search(value):
                raise CredentialsUnusable(
                    PROVIDER, f"the {what} of site {_UNSENDABLE.sub('?', site.site_id)} in the sites table has a line "
                              "break or another control character, which no HTTP header can carry: register the "
                              "site again with its key as Wix shows it (blogstream sites add SITE)")
        headers = {"Content-Type": "application/json"}
        # Empty values are left out: an empty header is still a header, and the
        # missing-credential error from Wix is the clearer message.
        if site.wix_api_key:
            headers["Authorization"] = site.wix_api_key
        if site.site_id:
            headers["wix-site-id"] = site.site_id
        return headers

    async def _request(
        self,
        site: WixSite,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        allow_not_found: bool = False,
        image_url: str | None = None,
    ) -> WixAnswer:
        content = json.dumps(json_body, ensure_ascii=False).encode("utf-8") if json_body is not None else None
        try:
            async with self._http().request(
                method, URL(self._base + path, encoded=True), data=content, headers=self._headers(site)
            ) as answer:
                response = WixAnswer(answer.status, answer.headers, await answer.read())
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError too (3.11+: asyncio's is the builtin)
            raise ProviderUnavailable(
                PROVIDER, f"{method} {path} for site {site.site_id}: no response ({type(exc).__name__})"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                PROVIDER, f"{method} {path} for site {site.site_id}: could not reach Wix ({type(exc).__name__})"
            ) from exc
        if response.status_code < 400 or (allow_not_found and response.status_code == 404):
            return response
        raise self._map_error(site, method, path, response, image_url=image_url)

    def _json(self, response: WixAnswer) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise MalformedOutput(
                PROVIDER, "Wix answered with a body that is not JSON", status=response.status_code
            ) from None
        if not isinstance(data, dict):
            raise MalformedOutput(
                PROVIDER, "Wix answered with JSON that is not an object", status=response.status_code
            )
        return data

    def _map_error(
        self, site: WixSite, method: str, path: str, response: WixAnswer, *, image_url: str | None
    ) -> ProviderError:
        status = response.status_code
        parsed = _parse_error_body(response)
        text = redact(f"{method} {path} for site {site.site_id}: {parsed.message}", [site.wix_api_key])
        retry_after = parse_retry_after(response.headers)
        if retry_after is None:
            retry_after = parsed.retry_after
        common: dict[str, Any] = {
            "status": status,
            "retry_after": retry_after,
            "rate_limit": parse_rate_limit_headers(response.headers),
        }
        if status == 429:
            return RateLimited(PROVIDER, text, **common)
        if status >= 500 or status in (408, 409):
            return ProviderUnavailable(PROVIDER, text, **common)
        if status in (401, 403):
            return RejectedRequest(
                PROVIDER,
                f"{text} - check this site's wix_api_key and site_id in the sites table "
                "(the key needs Blog and Media Manager permissions for that site)",
                **common,
            )
        if image_url is not None and (
            parsed.code in _EXPIRED_CODES
            or (status in (400, 404, 410, 412, 422) and _EXPIRED_TEXT.search(parsed.message))
        ):
            return ImageExpired(PROVIDER, f"{text} - the image URL is gone; generate a new image", **common)
        return RejectedRequest(PROVIDER, text, **common)
