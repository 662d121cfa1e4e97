"""Unit tests: markdown_to_ricos."""

from __future__ import annotations

import json
from typing import Any

from connectors.wix_blog import markdown_to_ricos


def texts(node: dict[str, Any]) -> list[str]:
    """All TEXT strings under a node, in order."""
    out: list[str] = []
    if node.get("type") == "TEXT":
        out.append(node["textData"]["text"])
    for child in node.get("nodes", []):
        out.extend(texts(child))
    return out


def test_paragraphs_headings_and_lists() -> None:
    doc = markdown_to_ricos(
        "# Title\n\nFirst line\nsame paragraph.\n\n## Section\n\n- one\n- two\n  continued\n\n"
        "1. first\n2) second\n\n### Deep\nAfter."
    )
    kinds = [n["type"] for n in doc["nodes"]]
    assert kinds == ["HEADING", "PARAGRAPH", "HEADING", "BULLETED_LIST", "ORDERED_LIST", "HEADING", "PARAGRAPH"]
    h1, para, h2, bullets, ordered, h3, after = doc["nodes"]
    assert h1["headingData"] == {"level": 1} and texts(h1) == ["Title"]
    assert texts(para) == ["First line same paragraph."]
    assert h2["headingData"] == {"level": 2} and h3["headingData"] == {"level": 3}
    assert [texts(item) for item in bullets["nodes"]] == [["one"], ["two continued"]]
    assert all(item["type"] == "LIST_ITEM" and item["nodes"][0]["type"] == "PARAGRAPH" for item in bullets["nodes"])
    assert [texts(item) for item in ordered["nodes"]] == [["first"], ["second"]]
    assert texts(after) == ["After."]


def test_node_ids_are_unique_and_stable() -> None:
    markdown = "## A\n\ntext\n\n- x\n- y"
    doc = markdown_to_ricos(markdown)
    ids: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("type") != "TEXT":
            ids.append(node["id"])
        for child in node.get("nodes", []):
            walk(child)

    for node in doc["nodes"]:
        walk(node)
    assert len(ids) == len(set(ids)) and all(ids)
    assert markdown_to_ricos(markdown) == doc


def test_html_and_script_stay_literal_text() -> None:
    evil = '<script>alert("x")</script> <img src=x onerror=alert(1)> &amp; <b>bold</b>'
    doc = markdown_to_ricos(f"## {evil}\n\n{evil}\n\n- {evil}")
    assert texts(doc["nodes"][0]) == [evil]
    assert texts(doc["nodes"][1]) == [evil]
    assert texts(doc["nodes"][2]) == [evil]
    # Only structural node types appear; nothing that would carry raw HTML.
    types = set()

    def walk(node: dict[str, Any]) -> None:
        types.add(node["type"])
        for child in node.get("nodes", []):
            walk(child)

    for node in doc["nodes"]:
        walk(node)
    assert types <= {"HEADING", "PARAGRAPH", "TEXT", "BULLETED_LIST", "LIST_ITEM"}
    assert "HTML" not in json.dumps(doc)


def test_bold_and_italic_become_decorations() -> None:
    (para,) = markdown_to_ricos("Plain **strong** and *soft* but 2 * 3 * 4 stays.")["nodes"]
    runs = [(n["textData"]["text"], [d["type"] for d in n["textData"]["decorations"]]) for n in para["nodes"]]
    assert runs == [
        ("Plain ", []),
        ("strong", ["BOLD"]),
        (" and ", []),
        ("soft", ["ITALIC"]),
        (" but 2 * 3 * 4 stays.", []),
    ]


def test_everything_else_is_text() -> None:
    doc = markdown_to_ricos("[link](javascript:alert(1)) `code` > quote\n\n---\n\n#not a heading")
    assert texts(doc["nodes"][0]) == ["[link](javascript:alert(1)) `code` > quote"]
    assert doc["nodes"][1]["type"] == "DIVIDER"
    assert texts(doc["nodes"][2]) == ["#not a heading"]


def test_empty_and_windows_newlines() -> None:
    assert markdown_to_ricos("")["nodes"] == []
    doc = markdown_to_ricos("a\r\nb\r\n\r\nc")
    assert [texts(n) for n in doc["nodes"]] == [["a b"], ["c"]]
