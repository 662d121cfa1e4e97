from __future__ import annotations

import asyncio
import struct
import time

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError

pytestmark = pytest.mark.asyncio

MODEL = "black-forest-labs/flux-schnell"
WIX_HEADERS = {"Authorization": "wix-api-key", "wix-site-id": "site-a"}


def client(sim) -> replicate.Client:
    return replicate.Client(api_token="r8_test", base_url=sim.replicate_base_url)


def assert_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


async def test_sync_create_returns_downloadable_png(sim):
    c = client(sim)
    # NB: use client.models.predictions.*create(..., wait=...): replicate 1.0.7's
    # client.predictions.create(model=..., wait=...) silently drops `wait`.
    p = await c.models.predictions.async_create(model=MODEL, wait=30,
                                                input={"prompt": "a lighthouse", "aspect_ratio": "16:9"})
    assert p.status == "succeeded" and p.model == MODEL
    assert isinstance(p.output, list) and len(p.output) == 1
    url = p.output[0]
    assert url.startswith(sim.replicate_base_url + "/files/") and url.endswith(".png")
    async with httpx.AsyncClient() as h:
        r = await h.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    w, hgt = assert_png(r.content)
    assert w > hgt  # 16:9


async def test_sync_sdk_run_and_blocking_client(sim):
    c = client(sim)
    out = await asyncio.to_thread(c.run, MODEL, input={"prompt": "a fox", "num_outputs": 2})
    assert len(out) == 2 and all(u.endswith(".png") for u in out)
    p = await asyncio.to_thread(c.models.predictions.create, model=MODEL, input={"prompt": "x"}, wait=True)
    assert p.status == "succeeded"
    led = sim.ledger()["replicate"]
    assert led["sync_requests"] == 2 and led["predictions_succeeded"] == 2


async def test_async_create_then_get(sim):
    c = client(sim)
    p = await c.predictions.async_create(model=MODEL, input={"prompt": "a quiet harbor"})
    assert p.status == "starting" and p.output is None
    assert p.urls["get"].endswith(f"/replicate/v1/predictions/{p.id}")
    deadline = time.monotonic() + 5
    while p.status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
        p = await c.predictions.async_get(p.id)
    assert p.status == "succeeded" and p.output and p.completed_at and p.metrics["predict_time"] >= 0
    # version-based endpoint
    v = await c.predictions.async_create(version="abc123", input={"prompt": "x"}, wait=10)
    assert v.status == "succeeded" and v.version == "abc123"


async def test_prefer_wait_shorter_than_latency_returns_running(sim):
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": [30, 30]}})
    c = client(sim)
    t0 = time.monotonic()
    p = await c.models.predictions.async_create(model=MODEL, input={"prompt": "slow"}, wait=1)
    assert 0.9 <= time.monotonic() - t0 < 5
    assert p.status in ("starting", "processing") and p.output is None
    p = await c.predictions.async_cancel(p.id)
    assert p.status == "canceled"
    assert sim.ledger()["replicate"]["per_site"]["-"]["in_progress"] == 0


async def test_output_expiry_404_and_wix_import_rejected(sim):
    c = client(sim)
    p = await c.models.predictions.async_create(model=MODEL, input={"prompt": "an owl"}, wait=10)
    url = p.output[0]
    sim.configure({"wix": {"latency_file_ready": 0}})  # Wix's download done as it answers: READY or FAILED at once
    async with httpx.AsyncClient() as h:
        ok = await h.post(sim.wix_base_url + "/site-media/v1/files/import", headers=WIX_HEADERS,
                          json={"url": url, "mediaType": "IMAGE", "displayName": "owl.png"})
        assert ok.status_code == 200 and ok.json()["file"]["operationStatus"] == "READY"
        sim.configure({"replicate": {"output_ttl_seconds": 0}})  # everything finished is now expired
        assert (await h.get(url)).status_code == 404
        g = await c.predictions.async_get(p.id)
        assert g.output is None and g.status == "succeeded"
        raw = (await h.get(f"{sim.replicate_base_url}/v1/predictions/{p.id}",
                           headers={"Authorization": "Bearer r8_test"})).json()
        assert raw["data_removed"] is True
        bad = await h.post(sim.wix_base_url + "/site-media/v1/files/import", headers=WIX_HEADERS,
                           json={"url": url, "mediaType": "IMAGE", "displayName": "owl.png"})
        assert bad.status_code == 200 and bad.json()["file"]["operationStatus"] == "FAILED"
        unknown = await h.post(sim.wix_base_url + "/site-media/v1/files/import", headers=WIX_HEADERS,
                               json={"url": sim.replicate_base_url + "/files/nosuchfile.png", "mediaType": "IMAGE"})
        assert unknown.status_code == 200 and unknown.json()["file"]["operationStatus"] == "FAILED"


async def test_create_rate_limit(sim):
    sim.configure({"replicate": {"create_rpm": 2}})
    c = client(sim)
    for _ in range(2):
        await c.models.predictions.async_create(model=MODEL, input={"prompt": "x"})
    with pytest.raises(ReplicateError) as ei:
        await c.models.predictions.async_create(model=MODEL, input={"prompt": "x"})
    assert ei.value.status == 429 and "Request was throttled" in ei.value.detail
    async with httpx.AsyncClient() as h:
        r = await h.post(f"{sim.replicate_base_url}/v1/models/{MODEL}/predictions",
                         headers={"Authorization": "Bearer r8_test"}, json={"input": {"prompt": "x"}})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30
        # reads have their own (larger) window
        g = await h.get(f"{sim.replicate_base_url}/v1/predictions", headers={"Authorization": "Bearer r8_test"})
        assert g.status_code == 200
    led = sim.ledger()["replicate"]
    assert led["max_requests_in_window"] == 2 and led["rejected_429"] == 2 and led["admitted"] == 3


async def test_errors_auth_validation_and_failures(sim):
    c = client(sim)
    async with httpx.AsyncClient() as h:
        r = await h.post(f"{sim.replicate_base_url}/v1/models/{MODEL}/predictions", json={"input": {"prompt": "x"}})
        assert r.status_code == 401
    with pytest.raises(ReplicateError) as ei:
        await c.models.predictions.async_create(model=MODEL, input={"no_prompt": 1})
    assert ei.value.status == 422
    sim.configure({"replicate": {"error_rate": 1.0}})
    with pytest.raises(ReplicateError) as ei:
        await c.models.predictions.async_create(model=MODEL, input={"prompt": "x"})
    assert ei.value.status in (500, 503)
    sim.configure({"replicate": {"error_rate": 0.0, "fail_rate": 1.0}})
    with pytest.raises(ModelError):
        await c.async_run(MODEL, input={"prompt": "x"})
    led = sim.ledger()["replicate"]
    assert led["errors_5xx"] == 1 and led["predictions_failed"] == 1


async def test_external_load_on_create_window(sim):
    from .conftest import wait_until
    sim.configure({"replicate": {"create_rpm": 3, "external_rpm": 6000}})
    wait_until(lambda: sim.ledger()["replicate"]["current_requests_in_window"] >= 3)
    sim.configure({"replicate": {"external_rpm": 0}})
    with pytest.raises(ReplicateError) as ei:
        await client(sim).models.predictions.async_create(model=MODEL, input={"prompt": "x"})
    assert ei.value.status == 429
    led = sim.ledger()["replicate"]
    assert led["external_admitted"] == 3 and led["max_requests_in_window"] == 3


# --------------------------------------------------------------------------- metering and billing


async def test_creates_and_other_calls_are_metered_apart_per_endpoint(sim):
    c = client(sim)
    p = await c.models.predictions.async_create(model=MODEL, input={"prompt": "a kite"}, wait=10)
    for _ in range(3):
        await c.predictions.async_get(p.id)
    await c.predictions.async_cancel(p.id)  # finished already: a no-op, but a metered call
    async with httpx.AsyncClient() as h:
        await h.get(f"{sim.replicate_base_url}/v1/predictions", headers={"Authorization": "Bearer r8_test"})
    led = sim.ledger()["replicate"]
    assert led["current_requests_in_window"] == 1 and led["current_requests_in_window_other"] == 5
    counts = {name: (e["calls"], e["admitted"]) for name, e in led["endpoints"].items()}
    assert counts == {"create": (1, 1), "get": (3, 3), "cancel": (1, 1), "list": (1, 1)}
    assert led["predictions_canceled"] == 0  # a finished prediction stays succeeded


async def test_a_prediction_is_billed_for_the_time_it_ran_and_its_images(sim):
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": [0.3, 0.3]}})
    c = client(sim)
    done = await c.models.predictions.async_create(model=MODEL, input={"prompt": "a boat"}, wait=10)
    assert done.status == "succeeded"
    bill = sim.ledger()["replicate"]["billing"]
    # It starts 0.03 s after the create (a tenth of its latency) and runs until 0.3 s.
    assert bill["predictions"] == 1 and bill["images"] == 1
    assert 0.2 <= bill["seconds"] <= 0.4


async def test_a_canceled_prediction_is_billed_until_canceled_and_nothing_before_it_started(sim):
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": [30, 30]}})  # starts 0.5 s after the create
    c = client(sim)
    early = await c.models.predictions.async_create(model=MODEL, input={"prompt": "never ran"})
    await c.predictions.async_cancel(early.id)
    late = await c.models.predictions.async_create(model=MODEL, input={"prompt": "ran a while"})
    await asyncio.sleep(1.0)
    canceled = await c.predictions.async_cancel(late.id)
    assert canceled.status == "canceled"
    bill = sim.ledger()["replicate"]["billing"]
    await asyncio.sleep(0.3)
    assert sim.ledger()["replicate"]["billing"]["seconds"] == bill["seconds"]  # billing stopped at the cancel
    assert bill["predictions"] == 1 and bill["canceled_after_start"] == 1 and bill["images"] == 0
    assert 0.4 <= bill["seconds"] <= 0.8  # ran from 0.5 s to about 1.0 s
    assert sim.ledger()["replicate"]["predictions_canceled"] == 2


async def test_other_error_rate_fails_polls_and_cancels_but_not_creates(sim):
    sim.configure({"replicate": {"other_error_rate": 1.0}})
    c = client(sim)
    p = await c.models.predictions.async_create(model=MODEL, input={"prompt": "a dune"}, wait=10)
    assert p.status == "succeeded"
    async with httpx.AsyncClient() as h:
        r = await h.get(f"{sim.replicate_base_url}/v1/predictions/{p.id}", headers={"Authorization": "Bearer r8_test"})
        assert r.status_code in (500, 503)
        r = await h.post(f"{sim.replicate_base_url}/v1/predictions/{p.id}/cancel",
                         headers={"Authorization": "Bearer r8_test"})
        assert r.status_code in (500, 503)
    endpoints = sim.ledger()["replicate"]["endpoints"]
    assert endpoints["get"]["errors_5xx"] == 1 and endpoints["cancel"]["errors_5xx"] == 1
    assert endpoints["create"]["errors_5xx"] == 0


async def test_billing_in_dollars_per_image_for_flux_and_per_second_for_other_models(sim):
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": [0.3, 0.3], "fail_rate": 0.0}})
    c = client(sim)
    await c.models.predictions.async_create(model=MODEL, input={"prompt": "two boats", "num_outputs": 2}, wait=10)
    other = await c.models.predictions.async_create(model="someone/sdxl", input={"prompt": "a boat"}, wait=10)
    assert other.status == "succeeded"
    bill = sim.ledger()["replicate"]["billing"]
    assert bill["images"] == 3 and bill["predictions"] == 2  # both ran as long: half the seconds each
    assert bill["usd"] == pytest.approx(2 * 0.003 + bill["seconds"] / 2 * 0.000975, abs=1e-6)


async def test_a_failed_flux_prediction_costs_nothing(sim):
    sim.configure({"latency_scale": 1.0, "replicate": {"latency": [0.2, 0.2], "fail_rate": 1.0}})
    c = client(sim)
    with pytest.raises(ModelError):
        await asyncio.to_thread(c.run, MODEL, input={"prompt": "refused"})
    bill = sim.ledger()["replicate"]["billing"]
    assert bill["predictions"] == 1 and bill["seconds"] > 0 and bill["usd"] == 0
