"""Writes kafka-ui-serde/src/test/resources/vectors.json: records the Python encoder writes.

The Java serde's tests decode every vector and compare with `decoded` (what the Python
side reads back), so both sides agree on schemas, fingerprints and values. Records
written with older schema versions come from tests/contract/fixtures/records.json
(the Python encoder writes only the current versions).

Run from the repository root:  .venv/bin/python kafka-ui-serde/make_test_vectors.py
tests/stack/test_kafka_ui_serde.py fails when the committed file is stale.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "kafka-ui-serde" / "src" / "test" / "resources" / "vectors.json"
FIXTURES = ROOT / "tests" / "contract" / "fixtures" / "records.json"

UNICODE = "Kaffee: Ümlaute, emoji ☕🚀, 中文, עברית, Ελληνικά"

_REQUEST = {
    "request_id": "req-2026.0001:a_b",
    "site_id": "site.example-42",
    "topic": "How to brew cold coffee — " + UNICODE,
    "keywords": ["coffee", "cold brew", "café ☕", "<b>bold</b> & \"quoted\" \\ backslash"],
    "language": "es-419",
    "tone": "friendly, 😀",
    "target_words": 5000,
    "requested_at": 4102444800000,
    "audience": "home baristas 👩‍🍳",
    "priority": "bulk",
    "retry": 2147483647,
}
_MINIMAL_REQUEST = {"request_id": "r", "site_id": "s", "topic": "t", "requested_at": 1}
_ARTICLE = {
    "title": "Cold brew, " + UNICODE,
    "slug": "cold-brew",
    "excerpt": "Short & sweet <em>excerpt</em>",
    "body": "# Cold brew\n\n\tTabs, newlines,\r\nquotes \" and ' and \\ and a control \u0001 char.\n" + UNICODE,
    "tags": ["coffee", "☕"],
    "image_prompt": "a glass of cold brew, studio light",
    "image_alt": "Glas mit Cold Brew",
}
_EMPTY_ARTICLE = {
    "title": "",
    "slug": "",
    "excerpt": "",
    "body": "",
    "tags": [],
    "image_prompt": "",
    "image_alt": "",
}
_USAGE = {"prompt_tokens": 0, "completion_tokens": 2147483647}
_IMAGE = {
    "url": "https://replicate.delivery/pbxt/abc/out-0.webp?x=1&y=ü",
    "prediction_id": "p-123",
    "created_at": 1700000000123,
}

# (name, record, value); values are what a stage would pass to `encode`.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("BlogRequest with every field, unicode and markup", "BlogRequest", _REQUEST),
    ("BlogRequest with only the required fields (defaults, audience null)", "BlogRequest", _MINIMAL_REQUEST),
    ("BlogDraft", "BlogDraft", {
        "request": _REQUEST, "article": _ARTICLE, "usage": _USAGE, "attempts": 3, "drafted_at": 1700000000001,
    }),
    ("BlogDraft with empty strings and a minimal request", "BlogDraft", {
        "request": _MINIMAL_REQUEST, "article": _EMPTY_ARTICLE,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "drafted_at": 2,
    }),
    ("BlogIllustrated", "BlogIllustrated", {
        "request": _REQUEST, "article": _ARTICLE, "usage": _USAGE, "image": _IMAGE,
        "attempts": 1, "illustrated_at": 1700000000002,
    }),
    ("BlogResult DONE with every field", "BlogResult", {
        "request_id": "req-1", "site_id": "site-1", "status": "DONE", "stage": "publish",
        "post_id": "post-ü-1", "post_url": "https://example.com/post/cold-brew", "title": "Cold brew ☕",
        "error": None, "attempts": 2, "usage": {"prompt_tokens": 512, "completion_tokens": 1024},
        "finished_at": 1700000000003, "retry": 3,
    }),
    ("BlogResult FAILED with null optional fields", "BlogResult", {
        "request_id": "req-2", "site_id": "site-2", "status": "FAILED", "stage": "intake",
        "error": "invalid BlogRequest: topic: must be 1-300 characters — “smart quotes”", "finished_at": 4,
    }),
    ("BlogResult CANCELLED, only required fields", "BlogResult", {
        "request_id": "req-3", "site_id": "site-3", "status": "CANCELLED", "stage": "generate",
        "finished_at": 5,
    }),
]


def build() -> dict[str, Any]:
    """The whole file's content; deterministic, so a test can compare it with the committed one."""
    sys.path.insert(0, str(ROOT))
    from streams.contract import decode, encode
    from streams.contract.catalog import fingerprint

    vectors = []
    for name, record, value in CASES:
        data = encode(record, value)
        vectors.append({
            "name": name,
            "record": record,
            "writer": "current",
            "fingerprint": data[2:10].hex(),
            "hex": data.hex(),
            "decoded": decode(record, data),
        })
    if FIXTURES.exists():
        fixtures = json.loads(FIXTURES.read_text(encoding="utf-8"))["fixtures"]
        for i, fixture in enumerate(fixtures):
            if not fixture.get("fingerprint"):  # JSON requests: not Avro
                continue
            data = bytes.fromhex(fixture["hex"])
            current = fixture["fingerprint"] == fingerprint(fixture["record"]).hex()
            vectors.append({
                "name": f"tests/contract/fixtures/records.json #{i} ({fixture['writer']})",
                "record": fixture["record"],
                # "older": a frozen version (blog_request.vN.avsc); the fixture's own label is the version of its day
                "writer": "current" if current else "older",
                "fingerprint": fixture["fingerprint"],
                "hex": fixture["hex"],
                "decoded": decode(fixture["record"], data),  # what the Python reader returns today
            })
    return {
        "about": "Written by kafka-ui-serde/make_test_vectors.py with the Python encoder (streams.contract) "
        "and, for older schema versions, copied from tests/contract/fixtures/records.json. "
        "Regenerate, don't edit.",
        "vectors": vectors,
    }


def render() -> str:
    return json.dumps(build(), ensure_ascii=False, indent=1) + "\n"


def main() -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
