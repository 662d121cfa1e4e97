from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.asyncio

RICOS = {"nodes": [{"type": "PARAGRAPH", "id": "p1", "nodes": [
    {"type": "TEXT", "id": "", "nodes": [], "textData": {"text": "Hello world", "decorations": []}}]}]}


def headers(site: str = "site-a") -> dict:
    return {"Authorization": "IST.fake-api-key", "wix-site-id": site}


def draft(slug: str, title: str = "Sourdough for busy parents", **extra) -> dict:
    return {"draftPost": {"title": title, "excerpt": "Short excerpt", "richContent": RICOS, "seoSlug": slug,
                          "memberId": "member-1", "hashtags": ["bread"],
                          "media": {"wixMedia": {"image": {"id": "abc~mv2.png"}}, "displayed": True,
                                    "custom": True}, **extra},
            "publish": True}


async def test_auth_and_site_headers_required(sim):
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        r = await h.post("/blog/v3/draft-posts", json=draft("x"), headers={"wix-site-id": "site-a"})
        assert r.status_code == 401 and "message" in r.json()
        r = await h.post("/blog/v3/draft-posts", json=draft("x"), headers={"Authorization": "k"})
        assert r.status_code == 403 and r.json()["details"]["applicationError"]["code"]
    led = sim.ledger()["wix"]
    assert led["admitted"] == 0 and led["posts_total"] == 0


async def test_create_publish_and_lookup(sim):
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        r = await h.post("/blog/v3/draft-posts", json=draft("sourdough-req-123"), headers=headers())
        assert r.status_code == 200, r.text
        d = r.json()["draftPost"]
        assert d["status"] == "PUBLISHED" and d["seoSlug"] == "sourdough-req-123"
        assert d["url"] == {"base": "https://site-a.wixsite.example", "path": "/post/sourdough-req-123"}
        p = (await h.get("/blog/v3/posts/slugs/sourdough-req-123", headers=headers())).json()["post"]
        assert p["id"] == d["id"] and p["slug"] == "sourdough-req-123" and p["title"] == d["title"]
        q = await h.post("/blog/v3/posts/query", headers=headers(),
                         json={"query": {"filter": {"slug": "sourdough-req-123"}}})
        assert [x["id"] for x in q.json()["posts"]] == [d["id"]]
        # posts are per site
        assert (await h.get("/blog/v3/posts/slugs/sourdough-req-123", headers=headers("site-b"))).status_code == 404
        q = await h.post("/blog/v3/posts/query", headers=headers("site-b"),
                         json={"query": {"filter": {"slug": {"$eq": "sourdough-req-123"}}}})
        assert q.json()["posts"] == []
        # unpublished draft, then the publish endpoint
        body = draft("second-req-9")
        body["publish"] = False
        d2 = (await h.post("/blog/v3/draft-posts", json=body, headers=headers())).json()["draftPost"]
        assert d2["status"] == "UNPUBLISHED"
        assert (await h.get("/blog/v3/posts/slugs/second-req-9", headers=headers())).status_code == 404
        pub = await h.post(f"/blog/v3/draft-posts/{d2['id']}/publish", headers=headers())
        assert pub.status_code == 200 and pub.json() == {"postId": d2["id"]}
        assert (await h.get("/blog/v3/posts/slugs/second-req-9", headers=headers())).status_code == 200
        # publishing again does not create another post
        await h.post(f"/blog/v3/draft-posts/{d2['id']}/publish", headers=headers())
    led = sim.ledger()["wix"]
    assert led["posts_total"] == 2 and led["posts_per_site"] == {"site-a": 2} and led["duplicate_slugs"] == {}


async def test_validation_errors(sim):
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        no_title = draft("x")
        del no_title["draftPost"]["title"]
        r = await h.post("/blog/v3/draft-posts", json=no_title, headers=headers())
        assert r.status_code == 400
        assert r.json()["details"]["validationError"]["fieldViolations"][0]["field"] == "draftPost.title"
        no_rc = draft("x")
        del no_rc["draftPost"]["richContent"]
        r = await h.post("/blog/v3/draft-posts", json=no_rc, headers=headers())
        assert r.status_code == 400
        r = await h.post("/site-media/v1/files/import", json={"mediaType": "IMAGE"}, headers=headers())
        assert r.status_code == 400
        r = await h.post("/site-media/v1/files/import", headers=headers(),
                         json={"url": "https://example.com/cat.png", "mediaType": "IMAGE", "displayName": "cat"})
        f = r.json()["file"]
        assert r.status_code == 200 and f["mediaType"] == "IMAGE" and f["operationStatus"] == "PENDING"
        assert f["id"] and f["url"].startswith("https://") and f["displayName"] == "cat"
    assert sim.ledger()["wix"]["posts_total"] == 0


async def test_an_import_is_answered_pending_and_its_file_turns_ready_or_failed_later(sim):
    # As on Wix: the import answers before the download, which makes the file READY, or FAILED when its
    # source cannot be downloaded (here a Replicate output the simulator does not have: deleted, or never made).
    sim.configure({"wix": {"latency_file_ready": [0.5, 0.5]}, "latency_scale": 1.0})
    gone = sim.wix_base_url.removesuffix("/wix") + "/replicate/files/gone0.png"
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        ids = []
        for url in ("https://example.com/cat.png", gone):
            r = await h.post("/site-media/v1/files/import", headers=headers(),
                             json={"url": url, "mediaType": "IMAGE", "displayName": "x.png"})
            assert r.status_code == 200 and r.json()["file"]["operationStatus"] == "PENDING"
            ids.append(r.json()["file"]["id"])
        looked = [(await h.get(f"/site-media/v1/files/{i}", headers=headers())).json()["file"] for i in ids]
        assert [f["operationStatus"] for f in looked] == ["PENDING", "PENDING"]
        await asyncio.sleep(0.6)
        r = await h.post("/site-media/v1/files/get-files", json={"fileIds": ids + ["unknown"]}, headers=headers())
        looked = r.json()["files"]  # Get File Descriptors: one call for many, an unknown id left out
        assert [f["id"] for f in looked] == ids and "media" not in looked[1]
        assert [f["operationStatus"] for f in looked] == ["READY", "FAILED"]
        good, bad = ({"media": {"wixMedia": {"image": {"id": i}}}} for i in ids)
        for slug, media in (("good-cover", good), ("bad-cover", bad)):
            assert (await h.post("/blog/v3/draft-posts", json=draft(slug, **media), headers=headers())).status_code == 200
    led = sim.ledger()["wix"]
    assert led["imports_total"] == 2 and led["imports_failed"] == 1
    assert led["posts_total"] == 2 and led["posts_with_failed_cover"] == 1


async def test_duplicate_slugs_reported(sim):
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        for _ in range(2):
            r = await h.post("/blog/v3/draft-posts", json=draft("dup-req-1"), headers=headers())
            assert r.status_code == 200
        second = r.json()["draftPost"]
        assert second["seoSlug"] == "dup-req-1-1"  # Wix keeps slugs unique per site
        await h.post("/blog/v3/draft-posts", json=draft("dup-req-1"), headers=headers("site-b"))
    led = sim.ledger()["wix"]
    assert led["duplicate_slugs"] == {"site-a": {"dup-req-1": 2}}
    assert led["duplicate_posts_total"] == 1 and led["posts_per_site"] == {"site-a": 2, "site-b": 1}


async def test_per_site_rate_limits_are_independent(sim):
    sim.configure({"wix": {"site_rpm": 3}})
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        for i in range(3):
            assert (await h.get(f"/blog/v3/posts/slugs/s{i}", headers=headers("site-a"))).status_code == 404
        r = await h.get("/blog/v3/posts/slugs/s", headers=headers("site-a"))
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30
        assert r.json()["details"]["applicationError"]["code"] == "RATE_LIMIT_EXCEEDED"
        r = await h.post("/blog/v3/draft-posts", json=draft("b1"), headers=headers("site-b"))
        assert r.status_code == 200
        results = await asyncio.gather(*(h.get("/blog/v3/posts", headers=headers("site-c")) for _ in range(10)))
        assert sorted(x.status_code for x in results) == [200] * 3 + [429] * 7
    led = sim.ledger()["wix"]
    assert led["per_site"]["site-a"]["rejected_429"] == 1 and led["per_site"]["site-b"]["rejected_429"] == 0
    assert led["max_requests_in_window"] == 3
    assert all(s["max_requests_in_window"] <= 3 for s in led["per_site"].values())


async def test_error_rate_gives_5xx(sim):
    sim.configure({"wix": {"error_rate": 1.0}})
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        r = await h.post("/blog/v3/draft-posts", json=draft("e1"), headers=headers())
    assert r.status_code in (500, 503) and "message" in r.json()
    led = sim.ledger()["wix"]
    assert led["errors_5xx"] == 1 and led["posts_total"] == 0 and led["admitted"] == 1


async def test_control_endpoints(sim):
    async with httpx.AsyncClient(base_url=sim.base_url) as h:
        assert (await h.get("/_sim/health")).json() == {"ok": True}
        r = await h.post("/_sim/config", json={"wix": {"site_rpm": 7}, "openai": {"latency": [0.1, 0.2]}})
        assert r.status_code == 200 and r.json()["wix"]["site_rpm"] == 7
        assert (await h.get("/_sim/config")).json()["openai"]["latency"] == [0.1, 0.2]
        assert (await h.post("/_sim/config", json={"wix": {"site_rmp": 7}})).status_code == 400
        assert (await h.post("/_sim/config", json={"openai": {"error_rate": 2}})).status_code == 400
        await h.post("/wix/blog/v3/draft-posts", json=draft("c1"), headers=headers())
        assert (await h.get("/_sim/ledger")).json()["wix"]["posts_total"] == 1
        ev = (await h.get("/_sim/events", params={"provider": "wix", "since": 0})).json()
        assert len(ev) == 1 and ev[0][1] == "site-a"
        await h.post("/_sim/reset")
        led = (await h.get("/_sim/ledger")).json()
        assert led["wix"]["posts_total"] == 0 and led["wix"]["calls"] == 0
        assert (await h.get("/_sim/config")).json()["wix"]["site_rpm"] == 7  # reset keeps config


def bulk(*posts: dict, publish: bool = True, full: bool = False) -> dict:
    return {"draftPosts": [p["draftPost"] for p in posts], "publish": publish, "returnFullEntity": full}


async def test_bulk_create_is_one_call_with_a_result_per_item(sim):
    sim.configure({"wix": {"site_rpm": 2}})
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        await h.post("/blog/v3/draft-posts", json=draft("old-req-1"), headers=headers())
        no_title = draft("x")["draftPost"]
        del no_title["title"]
        body = bulk(draft("bulk-req-1"), {"draftPost": no_title}, draft("bulk-req-2"), draft("bulk-req-1"),
                    draft("old-req-1"))
        r = await h.post("/blog/v3/bulk/draft-posts/create", json=body, headers=headers())
        assert r.status_code == 200, r.text   # 200 although some items failed
        res = r.json()
        assert res["bulkActionMetadata"]["totalSuccesses"] == 3 and res["bulkActionMetadata"]["totalFailures"] == 2
        meta = [x["itemMetadata"] for x in res["results"]]
        assert [m["originalIndex"] for m in meta] == [0, 1, 2, 3, 4]
        assert [m["success"] for m in meta] == [True, False, True, False, True]
        assert meta[1]["id"] is None and meta[1]["error"]["code"] == "INVALID_ARGUMENT"
        assert "draftPost.title" in meta[1]["error"]["description"]
        assert meta[3]["error"]["code"] == "DUPLICATE_SLUG"   # twice in the same call
        items = [x.get("item") for x in res["results"]]
        assert items[0]["id"] == meta[0]["id"] and items[0]["status"] == "PUBLISHED"
        assert "richContent" not in items[0]   # returnFullEntity: false
        assert items[4]["seoSlug"] == "old-req-1-1"   # an existing slug gets a suffix, as with the single create
        # the bulk call counted as one request: the site's second and last of this window
        assert (await h.get("/blog/v3/posts/slugs/bulk-req-2", headers=headers())).status_code == 429
    led = sim.ledger()["wix"]
    assert led["per_site"]["site-a"]["admitted"] == 2 and led["bulk_create_calls"] == 1
    assert led["bulk_items_failed"] == 2 and led["posts_total"] == 4 and led["posts_per_site"] == {"site-a": 4}
    assert led["duplicate_slugs"] == {"site-a": {"old-req-1": 2}} and led["duplicate_posts_total"] == 1
    sim.configure({"wix": {"site_rpm": 200}})
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:   # bulk posts are found like the others
        p = (await h.get("/blog/v3/posts/slugs/bulk-req-2", headers=headers())).json()["post"]
        assert p["id"] == meta[2]["id"]
        q = await h.post("/blog/v3/posts/query", headers=headers(),
                         json={"query": {"filter": {"slug": {"$in": ["bulk-req-1", "bulk-req-2"]}}}})
        assert {x["id"] for x in q.json()["posts"]} == {meta[0]["id"], meta[2]["id"]}


async def test_bulk_limits_unpublished_and_full_entities(sim):
    sim.configure({"wix": {"bulk_max_items": 3, "max_post_bytes": 2000, "max_posts_per_blog": 4}})
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        url = "/blog/v3/bulk/draft-posts/create"
        too_many = bulk(*(draft(f"s{i}") for i in range(4)))
        r = await h.post(url, json=too_many, headers=headers())
        assert r.status_code == 400 and r.json()["details"]["validationError"]["fieldViolations"][0]["field"] == \
            "draftPosts"
        assert (await h.post(url, json={"draftPosts": []}, headers=headers())).status_code == 400
        big = draft("big", excerpt="x" * 3000)
        r = await h.post(url, json=bulk(draft("a1"), big, publish=False, full=True), headers=headers())
        res = r.json()["results"]
        assert r.status_code == 200 and res[1]["itemMetadata"]["error"]["code"] == "POST_TOO_LARGE"
        assert res[0]["item"]["status"] == "UNPUBLISHED" and res[0]["item"]["richContent"] == RICOS
        assert (await h.get("/blog/v3/posts/slugs/a1", headers=headers())).status_code == 404
        assert (await h.post("/blog/v3/draft-posts", json=big, headers=headers())).status_code == 400
        r = await h.post(url, json=bulk(draft("b1"), draft("b2"), draft("b3")), headers=headers())
        assert [x["itemMetadata"]["success"] for x in r.json()["results"]] == [True, True, True]
        r = await h.post(url, json=bulk(draft("c1")), headers=headers())   # 4 drafts already: the blog is full
        assert r.status_code == 200 and r.json()["results"][0]["itemMetadata"]["error"]["code"] == \
            "MAX_POSTS_REACHED"
    assert sim.ledger()["wix"]["posts_total"] == 3


async def test_bulk_import_is_one_call_with_a_result_per_file(sim):
    sim.configure({"wix": {"site_rpm": 3}})
    gone = sim.wix_base_url.removesuffix("/wix") + "/replicate/files/gone0.png"   # no such Replicate output
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        body = {"importFileRequests": [
            {"url": "https://example.com/a.png", "mediaType": "IMAGE", "displayName": "a.png"},
            {"url": gone, "mediaType": "IMAGE"},
            {"mediaType": "IMAGE"},
            {"url": "https://example.com/b.png", "mediaType": "IMAGE", "displayName": "b.png"},
        ], "returnEntity": True}
        r = await h.post("/site-media/v1/bulk/files/import-v2", json=body, headers=headers())
        assert r.status_code == 200, r.text
        res = r.json()
        meta = [x["itemMetadata"] for x in res["results"]]
        assert [m["success"] for m in meta] == [True, True, False, True]
        assert [m["originalIndex"] for m in meta] == [0, 1, 2, 3]
        assert meta[2]["error"]["code"] == "INVALID_ARGUMENT"
        files = [x.get("item") for x in res["results"]]
        assert files[0]["id"] == meta[0]["id"] and files[0]["url"].startswith("https://static.wixstatic.com/")
        assert "media" not in files[0] and files[3]["displayName"] == "b.png"
        # the file whose source is gone is imported like the others: only its download fails, later
        assert files[1]["operationStatus"] == "PENDING" and sim.ledger()["wix"]["imports_failed"] == 1
        assert res["bulkActionMetadata"] == {"totalSuccesses": 3, "totalFailures": 1, "undetailedFailures": 0}
        got = await h.get(f"/site-media/v1/files/{meta[3]['id']}", headers=headers())
        assert got.status_code == 200 and got.json()["file"]["displayName"] == "b.png"
        # the bulk call was one request of the site's three in this window, the file look-up the second
        r = await h.post("/site-media/v1/bulk/files/import-v2", json={"importFileRequests": []}, headers=headers())
        assert r.status_code == 400
        r = await h.post("/site-media/v1/bulk/files/import-v2", json=body, headers=headers())
        assert r.status_code == 429
    led = sim.ledger()["wix"]
    assert led["bulk_import_calls"] == 1 and led["bulk_items_failed"] == 1


async def test_bulk_items_fail_alone_and_lost_answers_leave_the_work_done(sim):
    sim.configure({"wix": {"bulk_item_error_rate": 0.5}})
    async with httpx.AsyncClient(base_url=sim.wix_base_url) as h:
        r = await h.post("/blog/v3/bulk/draft-posts/create", headers=headers(),
                         json=bulk(*(draft(f"flaky-{i}") for i in range(40))))
        assert r.status_code == 200
        meta = [x["itemMetadata"] for x in r.json()["results"]]
        failed = [m for m in meta if not m["success"]]
        assert 5 < len(failed) < 35 and {m["error"]["code"] for m in failed} == {"INTERNAL_ERROR"}
        assert sim.ledger()["wix"]["posts_total"] == 40 - len(failed)   # a failed item created nothing
        sim.configure({"wix": {"bulk_item_error_rate": 0.0, "lost_answer_rate": 1.0}})
        r = await h.post("/blog/v3/draft-posts", json=draft("lost-1"), headers=headers())
        assert r.status_code == 504 and r.json()["message"].startswith("DEADLINE_EXCEEDED")
        sim.configure({"wix": {"lost_answer_rate": 0.0}})
        assert (await h.get("/blog/v3/posts/slugs/lost-1", headers=headers())).status_code == 200
    assert sim.ledger()["wix"]["answers_lost"] == 1
