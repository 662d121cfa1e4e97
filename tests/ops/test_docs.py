"""What the docs tell a newcomer to type or open exists and does what they say.

- A URL with a query string in a shell block is quoted: unquoted, bash reads `&` as "run in the
  background" and cuts the URL there (the rest of the query is lost, and the answer is for the
  defaults), and `?` and `*` are glob characters.
- A Python name the docs give (`streams.contract.catalog.fingerprint(...)`) can be imported.
- A file of the repository the docs name is there.
"""
from __future__ import annotations

import glob
import importlib
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("bench-")),
        ROOT / "kafka-ui-serde" / "README.md", ROOT / "simulators" / "README.md"]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
URL = re.compile(r"(?:https?://|\blocalhost:\d|\b127\.0\.0\.1:\d)[^\s'\"]*")
SPECIAL = set("&?*[;|")


def shell_lines(text: str) -> list[str]:
    """Every command of every shell block, continuation lines joined."""
    lines = []
    for block in SHELL_BLOCK.findall(text):
        lines.extend(block.replace("\\\n", " ").splitlines())
    return lines


def unquoted(line: str, at: int) -> bool:
    """Whether position `at` of `line` is outside quotes (and before an unquoted `#` comment)."""
    quote = None
    for i, char in enumerate(line[:at]):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return False  # a comment: not run
    return quote is None


def test_the_check_sees_an_unquoted_query_and_passes_a_quoted_one():
    text = "```bash\ncurl http://h:1/a?x=1&y=2\ncurl 'http://h:1/a?x=1&y=2'\ncurl h  # see http://h/a?b&c\n```\n"
    bad = [line for line in shell_lines(text) for m in URL.finditer(line)
           if unquoted(line, m.start()) and SPECIAL & set(m.group())]
    assert bad == ["curl http://h:1/a?x=1&y=2"]


def test_urls_with_shell_characters_are_quoted_in_every_shell_block():
    bad = []
    for doc in DOCS:
        for line in shell_lines(doc.read_text(encoding="utf-8")):
            for m in URL.finditer(line):
                if unquoted(line, m.start()) and SPECIAL & set(m.group()):
                    bad.append(f"{doc.relative_to(ROOT)}: {line.strip()}")
    assert bad == []


PACKAGES = "streams|store|connectors|stack|simulators|ops"
PYTHON_NAME = re.compile(rf"`((?:{PACKAGES})(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\([^`]*\))?`")
REPO_PATH = re.compile(rf"`((?:{PACKAGES}|tests|docs|migrations|kafka-ui-serde)/[A-Za-z0-9_./*-]+)`")


def resolve(dotted: str) -> Any:
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_python_name_in_the_docs_can_be_imported():
    """docs/producing.md sent producers to streams.contract.schemas.fingerprint, which the move of the
    catalog to catalog.py left as an AttributeError."""
    bad = []
    for doc in DOCS:
        for name in sorted(set(PYTHON_NAME.findall(doc.read_text(encoding="utf-8")))):
            try:
                resolve(name)
            except (ImportError, AttributeError) as exc:
                bad.append(f"{doc.relative_to(ROOT)}: {name} ({type(exc).__name__}: {exc})")
    assert bad == []


def test_every_repository_file_the_docs_name_exists():
    bad = []
    for doc in DOCS:
        for path in sorted(set(REPO_PATH.findall(doc.read_text(encoding="utf-8")))):
            if not glob.glob(str(ROOT / path.rstrip("/."))):
                bad.append(f"{doc.relative_to(ROOT)}: {path}")
    assert bad == []
