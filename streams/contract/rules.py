"""The bounds every value meets, whatever door it came in by (docs/producing.md, "The fields").

One rule set for every entrance: the HTTP intake, raw Kafka records (Avro or JSON),
and what a stage produces from a provider's answer (the model's article, a post's
URL). A value that breaks one is refused where it enters, with the field named;
nothing past the contract may crash a later stage, Kafka or Postgres.

- **Text** (every string of every record; the conformer checks it on encode and
  decode): Unicode scalar values only (a lone surrogate such as "\\ud800" has no
  UTF-8 form), no NUL (Postgres text and jsonb cannot hold it), at most
  `MAX_TEXT_CHARS` characters. Fields people write one line of (topic, keywords,
  tone, audience, a title, tags) have no control characters at all; long text
  (an article's body, excerpt, image prompt) may have tab, newline and carriage
  return, and no other control character.
- **Records**: at most `MAX_RECORD_BYTES` encoded, below Kafka's default message
  limit (1 MiB), so a record that is accepted can always be produced.
- **Times** a producer gives (`requested_at`): from 2000-01-01 (UTC) to one day
  after now, in milliseconds since the epoch.
- **Ids**: `ID` (errors.py), 1-128 characters of A-Z a-z 0-9 . _ : -
- **The model's article**: `check_article` (below).
"""
from __future__ import annotations

import json
import re
import time
from typing import Any

from streams.contract.errors import FieldError

MAX_TEXT_CHARS = 100_000
MAX_RECORD_BYTES = 1_000_000
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
FUTURE_SLACK_MS = 86_400_000  # one day: clocks of other machines may run ahead

_SURROGATE = re.compile("[\ud800-\udfff]")
ONE_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # all but \t \n \r


def text_problem(value: str) -> str | None:
    """What makes `value` unfit for any string field, or None (cheap: this runs on every string)."""
    if len(value) > MAX_TEXT_CHARS:
        return f"must be at most {MAX_TEXT_CHARS} characters"
    if "\x00" in value:
        return "must not contain NUL (\\u0000) characters"
    if not value.isascii() and _SURROGATE.search(value):
        return "must be Unicode text: lone surrogates (\\ud800-\\udfff) have no UTF-8 form"
    return None


def time_problem(ms: int, *, now_ms: int | None = None) -> str | None:
    """A time in ms since the epoch that a producer gave: from 2000-01-01 to one day from now."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if MIN_TIME_MS <= ms <= now_ms + FUTURE_SLACK_MS:
        return None
    return "must be a time from 2000-01-01 to one day from now, in ms since the epoch (UTC)"


def clean_text(value: str, max_chars: int) -> str:
    """`value` made storable and sendable: NUL dropped, lone surrogates as U+FFFD, cut to `max_chars`.

    For text we write ourselves around foreign words (an error that quotes a provider).
    """
    value = value.replace("\x00", "")
    if not value.isascii():
        value = _SURROGATE.sub("\ufffd", value)
    return value[:max_chars]


def field_name(key: Any) -> str:
    """A field name someone sent, fit to be shown in an error: plain names as they are, others quoted and cut."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        return key
    return json.dumps(str(key)[:40]) + ("..." if len(str(key)) > 40 else "")


# --------------------------------------------------------------------------- the model's article

# (field, at least, at most, one line?) in characters, not counting surrounding spaces.
ARTICLE_TEXT = (
    ("title", 1, 300, True),
    ("excerpt", 0, 2_000, False),
    ("body", 1, 60_000, False),
    ("image_prompt", 0, 2_000, False),
    ("image_alt", 0, 500, True),
)
MAX_TAGS, MAX_TAG_CHARS = 20, 100
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _bounded(value: Any, low: int, high: int, one_line: bool) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if problem := text_problem(value):
        return problem
    if not low <= len(value.strip()) <= high:
        return f"must be {low}-{high} characters (not counting surrounding spaces)"
    if (ONE_LINE_CONTROL if one_line else TEXT_CONTROL).search(value):
        return "must not contain control characters" + (" (one line)" if one_line else " other than tab and newline")
    return None


def check_article(article: Any) -> list[FieldError]:
    """Everything wrong with a generated article before it is stored or published.

    The writer (connectors/openai_writer.py) already drops what is harmless to drop
    (NUL and other control characters, lone surrogates); what is left here (an empty
    or oversized field) fails the request with these messages.
    """
    if not isinstance(article, dict):
        return [FieldError("article", "must be an object")]
    errors = [
        FieldError(f"article.{name}", problem)
        for name, low, high, one_line in ARTICLE_TEXT
        if (problem := _bounded(article.get(name), low, high, one_line))
    ]
    slug = article.get("slug")
    if not (isinstance(slug, str) and len(slug) <= 200 and _SLUG.fullmatch(slug)):
        errors.append(FieldError("article.slug", "must be 1-200 characters of a-z 0-9 and single hyphens"))
    tags = article.get("tags")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        errors.append(FieldError("article.tags", f"must be a list of at most {MAX_TAGS} tags"))
    else:
        errors += [
            FieldError(f"article.tags[{i}]", problem)
            for i, tag in enumerate(tags)
            if (problem := _bounded(tag, 1, MAX_TAG_CHARS, True))
        ]
    return errors
