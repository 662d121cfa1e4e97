"""Markdown → Ricos, the rich-content document Wix Blog stores.

Only TEXT nodes with decorations are produced, never HTML: whatever markup a
customer typed into a topic is stored, and shown, as literal characters.
Hand-written because no library targets Ricos; the subset is what the article
contract allows (headings, paragraphs, lists, bold, italic).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["markdown_to_ricos"]


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


# The heading's text and an optional closing run of #s are split by hand (`_heading`): a pattern with a lazy
# text and an optional "\s+#+" before "\s*$" backtracked over a run of spaces in the line, O(n^2) (a 60,000-
# character heading line of the model's took ~25 s of CPU on the worker's event loop).
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s(.*)$")
_BULLET = re.compile(r"^\s{0,3}[-*+]\s+(.*)$")
_ORDERED = re.compile(r"^\s{0,3}\d{1,9}[.)]\s+(.*)$")
_RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")


def _heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line, its closing #s (after a space) dropped; None for other lines."""
    match = _HEADING.match(line)
    if match is None:
        return None
    text = match.group(2).strip()
    opened = text.rstrip("#")
    if opened != text and opened and opened[-1].isspace():  # "## Title ##": the closing run is not text
        text = opened.rstrip()
    return len(match.group(1)), text


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
        heading = _heading(line)
        if heading:
            flush_paragraph()
            flush_list()
            nodes.append(
                {
                    "type": "HEADING",
                    "id": ids.next(),
                    "nodes": _text_nodes(heading[1]),
                    "headingData": {"level": heading[0]},
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
