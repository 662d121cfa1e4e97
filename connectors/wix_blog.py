"""Publishing to Wix Blog: media import, draft post creation (published at once), slug lookup.

Each call carries its site's credentials (one pipeline serves many Wix sites),
so the HTTP client is shared and headers are per request. Article text is sent
as Ricos TEXT nodes, never as HTML: whatever markup a customer typed into a
topic is stored, and shown, as literal characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

from .closing import AsyncClosing
from .errors import (
    ImageExpired,
    MalformedOutput,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RejectedRequest,
    redact,
)
from .ratelimit_headers import parse_rate_limit_headers, parse_retry_after

__all__ = [
    "PublishedPost",
    "SiteCredentials",
    "WixBlog",
    "WixSite",
    "markdown_to_ricos",
]

PROVIDER = "wix"

# Wix's documented field limits; longer values are a permanent 400, so trim instead.
TITLE_MAX_CHARS = 200
EXCERPT_MAX_CHARS = 500

# What the import endpoint says when it cannot fetch the source URL (Replicate
# output deleted after ~1 h, or never existed).
_EXPIRED_CODES = frozenset({"URL_NOT_REACHABLE", "URL_NOT_FOUND", "FILE_NOT_FOUND", "DOWNLOAD_FAILED"})
_EXPIRED_TEXT = re.compile(
    r"unreachable|not reachable|could not (?:download|fetch)|failed to (?:download|fetch|import)|"
    r"404 not found|\bexpired\b|\bgone\b",
    re.I,
)


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
class PublishedPost:
    post_id: str
    url: str
    # The slug Wix actually used: it appends "-1", "-2" ... when the requested one is taken.
    slug: str | None = None


# --------------------------------------------------------------------------- Ricos


class _Ids:
    """Sequential node ids: stable output for identical input (diffable, testable)."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"n{self._n}"


_INLINE = re.compile(
    r"\*\*(?P<bold>[^*\n]+?)\*\*"  # **bold**
    r"|(?<![*\w])\*(?P<italic>[^*\s](?:[^*\n]*?[^*\s])?)\*(?![*\w])"  # *italic*
)


def _text_nodes(text: str) -> list[dict[str, Any]]:
    """TEXT nodes for one line of inline Markdown: **bold** and *italic* become
    decorations, everything else (HTML included) is literal text."""
    nodes: list[dict[str, Any]] = []

    def add(chunk: str, decorations: list[dict[str, Any]]) -> None:
        if chunk:
            nodes.append(
                {"type": "TEXT", "id": "", "nodes": [], "textData": {"text": chunk, "decorations": decorations}}
            )

    pos = 0
    for match in _INLINE.finditer(text):
        add(text[pos : match.start()], [])
        if match.group("bold") is not None:
            add(match.group("bold"), [{"type": "BOLD", "fontWeightValue": 700}])
        else:
            add(match.group("italic"), [{"type": "ITALIC", "italicData": True}])
        pos = match.end()
    add(text[pos:], [])
    return nodes


def _paragraph(ids: _Ids, text: str) -> dict[str, Any]:
    return {"type": "PARAGRAPH", "id": ids.next(), "nodes": _text_nodes(text), "paragraphData": {}}


_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_BULLET = re.compile(r"^\s{0,3}[-*+]\s+(.*)$")
_ORDERED = re.compile(r"^\s{0,3}\d{1,9}[.)]\s+(.*)$")
_RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")


def markdown_to_ricos(markdown: str) -> dict[str, Any]:
    """A Ricos document for the Markdown subset the article prompt asks for.

    Supported: paragraphs (blank-line separated, soft breaks joined), ATX
    headings (# .. ######), bulleted (-, *, +) and numbered lists, horizontal
    rules, **bold** and *italic*. Everything else is kept as literal text.
    """
    ids = _Ids()
    nodes: list[dict[str, Any]] = []
    paragraph: list[str] = []
    list_node: dict[str, Any] | None = None
    list_kind = ""
    item_lines: list[str] = []

    def flush_paragraph() -> None:
        if paragraph:
            nodes.append(_paragraph(ids, " ".join(paragraph)))
            paragraph.clear()

    def flush_item() -> None:
        if list_node is not None and item_lines:
            list_node["nodes"].append(
                {"type": "LIST_ITEM", "id": ids.next(), "nodes": [_paragraph(ids, " ".join(item_lines))]}
            )
            item_lines.clear()

    def flush_list() -> None:
        nonlocal list_node, list_kind
        flush_item()
        if list_node is not None:
            nodes.append(list_node)
        list_node, list_kind = None, ""

    def start_item(kind: str, text: str) -> None:
        nonlocal list_node, list_kind
        flush_paragraph()
        if list_node is not None and list_kind != kind:
            flush_list()
        if list_node is None:
            data_key = "bulletedListData" if kind == "BULLETED_LIST" else "orderedListData"
            list_node = {"type": kind, "id": ids.next(), "nodes": [], data_key: {"indentation": 0}}
            list_kind = kind
        flush_item()
        item_lines.append(text.strip())

    for raw_line in markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw_line.rstrip()
        if not line.strip():
            # A blank line ends a paragraph; a list stays open (loose lists are common).
            flush_paragraph()
            continue
        if _RULE.match(line):
            flush_paragraph()
            flush_list()
            nodes.append(
                {
                    "type": "DIVIDER",
                    "id": ids.next(),
                    "nodes": [],
                    "dividerData": {"lineStyle": "SINGLE", "width": "LARGE", "alignment": "CENTER"},
                }
            )
            continue
        heading = _HEADING.match(line)
        if heading:
            flush_paragraph()
            flush_list()
            nodes.append(
                {
                    "type": "HEADING",
                    "id": ids.next(),
                    "nodes": _text_nodes(heading.group(2)),
                    "headingData": {"level": len(heading.group(1))},
                }
            )
            continue
        bullet = _BULLET.match(line)
        if bullet:
            start_item("BULLETED_LIST", bullet.group(1))
            continue
        ordered = _ORDERED.match(line)
        if ordered:
            start_item("ORDERED_LIST", ordered.group(1))
            continue
        if list_node is not None and (raw_line[:1].isspace() and item_lines):
            item_lines.append(line.strip())  # indented continuation of the current item
            continue
        flush_list()
        paragraph.append(line.strip())

    flush_paragraph()
    flush_list()
    return {"nodes": nodes, "metadata": {"version": 1}, "documentStyle": {}}


# --------------------------------------------------------------------------- client


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


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


@dataclass(frozen=True)
class _WixErrorBody:
    message: str
    code: str | None
    retry_after: float | None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parse_error_body(response: httpx.Response) -> _WixErrorBody:
    """Wix errors: {"message", "details": {"applicationError": {"code", "description", "data"}}}
    or {"details": {"validationError": {"fieldViolations": [...]}}}."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:300] if response.text else ""
        return _WixErrorBody(text or f"HTTP {response.status_code}", None, None)
    details = _object(body.get("details"))
    app_error = _object(details.get("applicationError"))
    message = str(body.get("message") or app_error.get("description") or f"HTTP {response.status_code}")
    description = app_error.get("description")
    if isinstance(description, str) and description and description not in message:
        message = f"{message} ({description})"
    violations = _object(details.get("validationError")).get("fieldViolations")
    if isinstance(violations, list) and violations:
        parts = [
            f"{v.get('field')}: {v.get('description')}" for v in violations if isinstance(v, dict) and v.get("field")
        ]
        if parts and not any(p in message for p in parts):
            message = f"{message} [{'; '.join(parts)}]"
    code = app_error.get("code") if isinstance(app_error.get("code"), str) else None
    retry_after = _object(app_error.get("data")).get("retryAfterSeconds")
    return _WixErrorBody(message, code, float(retry_after) if isinstance(retry_after, (int, float)) else None)


class WixBlog(AsyncClosing):
    """Wix REST client shared by every site. Create one per worker and reuse it."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            # HTTP/1.1 keep-alive; enough connections for every in-flight publish of a worker.
            http2=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"Accept": "application/json"},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- public API -----------------------------------------------------------------

    async def import_image(self, site: WixSite, url: str, *, display_name: str) -> dict[str, Any]:
        """Copy an image into the site's Media Manager; returns Wix's `file` (id, url, ...).

        Raises ImageExpired when Wix cannot download `url` (the caller regenerates it).
        """
        body = {"url": url, "mediaType": "IMAGE", "displayName": display_name}
        response = await self._request(site, "POST", "site-media/v1/files/import", json_body=body, image_url=url)
        data = self._json(response)
        file = data.get("file")
        if not isinstance(file, dict) or not file.get("id") or not file.get("url"):
            raise MalformedOutput(
                PROVIDER, "media import answered without file.id / file.url", status=response.status_code
            )
        return file

    async def find_post_by_slug(self, site: WixSite, slug: str) -> PublishedPost | None:
        """The published post with this slug, or None. Used to make publishing idempotent."""
        response = await self._request(
            site, "GET", f"blog/v3/posts/slugs/{quote(slug, safe='')}", allow_not_found=True
        )
        if response.status_code == 404:
            return None
        post = self._json(response).get("post")
        if not isinstance(post, dict) or not post.get("id"):
            raise MalformedOutput(PROVIDER, "post lookup answered without post.id", status=response.status_code)
        url = _post_url(post.get("url"))
        if url is None:
            raise MalformedOutput(PROVIDER, f"post {post['id']} has no url", status=response.status_code)
        return PublishedPost(
            post_id=str(post["id"]), url=url, slug=post.get("slug") or _slug_from_path(post.get("url"))
        )

    async def create_post(
        self,
        site: WixSite,
        *,
        title: str,
        excerpt: str,
        body_markdown: str,
        slug: str,
        tags: Iterable[str],
        image: dict[str, Any] | None,
        image_alt: str,
    ) -> PublishedPost:
        """Create a draft post and publish it in the same call.

        Not idempotent: after a timeout the post may exist, so callers check
        `find_post_by_slug` before retrying (Wix would otherwise publish a
        second copy under "<slug>-1").
        """
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
        response = await self._request(
            site, "POST", "blog/v3/draft-posts", json_body={"draftPost": draft, "publish": True}
        )
        created = self._json(response).get("draftPost")
        if not isinstance(created, dict) or not created.get("id"):
            raise MalformedOutput(PROVIDER, "draft post answered without draftPost.id", status=response.status_code)
        url = _post_url(created.get("url"))
        if url is None:
            # The post exists; ask for it rather than fail and risk a duplicate on retry.
            found = await self.find_post_by_slug(site, created.get("seoSlug") or slug)
            if found is None:
                raise MalformedOutput(PROVIDER, f"post {created['id']} was created without a url")
            return found
        return PublishedPost(
            post_id=str(created["id"]),
            url=url,
            slug=created.get("seoSlug") or _slug_from_path(created.get("url")) or slug,
        )

    # -- plumbing -------------------------------------------------------------------

    def _headers(self, site: WixSite) -> dict[str, str]:
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
    ) -> httpx.Response:
        content = json.dumps(json_body, ensure_ascii=False).encode("utf-8") if json_body is not None else None
        try:
            response = await self._client.request(method, path, content=content, headers=self._headers(site))
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                PROVIDER, f"{method} {path} for site {site.site_id}: no response ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                PROVIDER, f"{method} {path} for site {site.site_id}: could not reach Wix ({type(exc).__name__})"
            ) from exc
        if response.status_code < 400 or (allow_not_found and response.status_code == 404):
            return response
        raise self._map_error(site, method, path, response, image_url=image_url)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
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
        self, site: WixSite, method: str, path: str, response: httpx.Response, *, image_url: str | None
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
