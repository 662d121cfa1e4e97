"""docs/producing.md tells producers the header bytes to write: they must be the computed ones."""
from __future__ import annotations

import re
from pathlib import Path

from streams.contract.catalog import RECORD_NAMES, contract, fingerprint

DOCS = Path(__file__).resolve().parents[2] / "docs" / "producing.md"
ROW = re.compile(r"^\| `(?P<record>\w+)` \| `c3 01 (?P<fingerprint>(?:[0-9a-f]{2} ){7}[0-9a-f]{2})` \|$", re.MULTILINE)
# Any 10-byte header, spaced ("c3 01 1e 9c ...") or not ("c3011e9c..."), anywhere in the text.
HEADER = re.compile(r"c3 ?01 ?((?:[0-9a-f]{2} ?){7}[0-9a-f]{2})")


def test_header_table_lists_each_record_with_its_current_fingerprint() -> None:
    table = {m["record"]: bytes.fromhex(m["fingerprint"]) for m in ROW.finditer(DOCS.read_text("utf-8"))}
    assert table == {name: fingerprint(name) for name in RECORD_NAMES}


def test_every_header_the_docs_mention_is_a_known_schema_version() -> None:
    mentioned = [bytes.fromhex(m[1].replace(" ", "")) for m in HEADER.finditer(DOCS.read_text("utf-8"))]
    assert len(mentioned) > len(RECORD_NAMES)  # the table, the v1 request, the Python example
    assert [fp.hex() for fp in mentioned if fp not in contract().writers] == []


def test_the_older_request_headers_are_those_of_the_older_schemas() -> None:
    text = DOCS.read_text("utf-8")
    named = {}
    for version in ("v1", "v2", "v3"):
        sentence = re.search(rf"a {version} `BlogRequest`.*?starts with\s+`c3 01 ([0-9a-f ]+)`", text, re.DOTALL | re.I)
        assert sentence is not None, version
        named[version] = bytes.fromhex(sentence[1].replace(" ", ""))
    loaded = contract()
    older = {fp for fp, w in loaded.writers.items() if w.record_name == "BlogRequest" and fp != fingerprint("BlogRequest")}
    assert older == set(named.values())


def test_the_older_result_header_is_that_of_the_older_schema() -> None:
    sentence = re.search(r"v1 `BlogResult`s.*?starting with\s+`c3 01 ([0-9a-f ]+)`", DOCS.read_text("utf-8"), re.DOTALL)
    assert sentence is not None
    loaded = contract()
    older = {fp for fp, w in loaded.writers.items() if w.record_name == "BlogResult" and fp != fingerprint("BlogResult")}
    assert older == {bytes.fromhex(sentence[1].replace(" ", ""))}
