"""The rules every value meets at every entrance (streams/contract/rules.py), and the model's article."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.errors import MalformedOutput
from connectors.openai_writer import parse_article
from streams.contract import check_article, clean_text, time_problem
from streams.contract.rules import MAX_TEXT_CHARS, MIN_TIME_MS, field_name, text_problem

ARTICLE = {
    "title": "Cold brew, simply",
    "slug": "cold-brew-simply",
    "excerpt": "Steep, wait, strain.\nThat is all.",
    "body": "## Steep\n\nCoarse coffee, cold water.\n\n- 16 hours\n- then strain\twell",
    "tags": ["coffee", "cold brew"],
    "image_prompt": "a glass of cold brew on a wooden table",
    "image_alt": "Cold brew in a glass",
}


def test_text_rules() -> None:
    assert text_problem("Kaffee ☕ 中文 \U0001F600") is None
    assert "NUL" in text_problem("a\x00b")
    assert "surrogate" in text_problem("a\ud800b")
    assert "surrogate" in text_problem("\udfff")
    assert text_problem("x" * MAX_TEXT_CHARS) is None
    assert "at most" in text_problem("x" * (MAX_TEXT_CHARS + 1))


def test_times_from_2000_to_one_day_ahead() -> None:
    now = 1_800_000_000_000
    assert time_problem(MIN_TIME_MS, now_ms=now) is None
    assert time_problem(now + 86_400_000, now_ms=now) is None
    for bad in (MIN_TIME_MS - 1, now + 86_400_001, 0, -1, 2**62, -(2**63)):
        assert time_problem(bad, now_ms=now) == "must be a time from 2000-01-01 to one day from now, in ms since the epoch (UTC)"
    assert time_problem(time.time_ns() // 1_000_000) is None


def test_clean_text_keeps_what_it_can() -> None:
    assert clean_text("a\x00b\ud800c", 100) == "ab\ufffdc"
    assert clean_text("x" * 50, 10) == "x" * 10
    clean_text("\udc00" * 5, 100).encode("utf-8")


def test_field_names_are_shown_safely() -> None:
    assert field_name("colour") == "colour"
    assert field_name("\ud800") == '"\\ud800"'
    assert field_name("k" * 100) == '"' + "k" * 40 + '"...'


def test_a_good_article_passes() -> None:
    assert check_article(ARTICLE) == []
    assert check_article(ARTICLE | {"excerpt": "", "image_prompt": "", "image_alt": "", "tags": []}) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": "   "}, "article.title"),
        ({"title": "t" * 301}, "article.title"),
        ({"title": "two\nlines"}, "article.title"),
        ({"title": "nul\x00"}, "article.title"),
        ({"body": ""}, "article.body"),
        ({"body": "b" * 60_001}, "article.body"),
        ({"body": "bell\x07"}, "article.body"),
        ({"body": "\ud800"}, "article.body"),
        ({"excerpt": "e" * 2001}, "article.excerpt"),
        ({"image_prompt": 5}, "article.image_prompt"),
        ({"image_alt": "a" * 501}, "article.image_alt"),
        ({"slug": "Not A Slug"}, "article.slug"),
        ({"slug": ""}, "article.slug"),
        ({"tags": ["t"] * 21}, "article.tags"),
        ({"tags": "a,b"}, "article.tags"),
        ({"tags": ["ok", ""]}, "article.tags[1]"),
        ({"tags": ["ok", "x" * 101]}, "article.tags[1]"),
    ],
)
def test_each_article_rule_names_its_field(change: dict[str, Any], field: str) -> None:
    assert [e.field for e in check_article(ARTICLE | change)] == [field]


def test_an_article_that_is_not_an_object() -> None:
    assert [e.field for e in check_article(None)] == ["article"]
    assert {e.field for e in check_article({})} >= {"article.title", "article.body", "article.slug", "article.tags"}


def test_the_writer_cleans_what_is_harmless_to_drop() -> None:
    content = json.dumps(ARTICLE | {
        "title": "Cold\x00 brew\n\tsimply\ud800",
        "body": "Line\x00 one\n\nLine\x1b two\twith a tab\r\n",
        "excerpt": "\x85e",
        "tags": ["#a\x00b", "A\x00B", "c\nd"] + [f"t{i}" for i in range(30)],
        "image_alt": "alt\x07",
    })
    article = parse_article(content)
    assert article["title"] == "Cold brew simply\ufffd"
    assert article["body"] == "Line one\n\nLine two\twith a tab"
    assert article["excerpt"] == "e" and article["image_alt"] == "alt"
    assert article["tags"][:2] == ["ab", "c d"] and len(article["tags"]) == 20
    assert check_article(article) == []


def test_what_cannot_be_cleaned_is_left_for_the_rules_to_refuse() -> None:
    article = parse_article(json.dumps(ARTICLE | {"body": "b" * 70_000}))
    assert [e.field for e in check_article(article)] == ["article.body"]
    with pytest.raises(MalformedOutput):  # nothing left of the title
        parse_article(json.dumps(ARTICLE | {"title": "\x00\x00"}))


MODEL_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=200)


@settings(database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({name: MODEL_TEXT for name in ARTICLE if name != "tags"}
                             | {"tags": st.lists(MODEL_TEXT, max_size=30)}))
def test_any_model_output_is_either_clean_or_refused(raw: dict[str, Any]) -> None:
    # Lone surrogates, NUL, every control character: what parse_article keeps is storable text.
    try:
        article = parse_article(json.dumps(raw))
    except MalformedOutput:
        return
    problems = check_article(article)
    assert {p.field.split("[")[0] for p in problems} <= {"article.title", "article.body", "article.tags"}
    for value in [article[k] for k in ARTICLE if k != "tags"] + article["tags"]:
        assert text_problem(value) is None
        value.encode("utf-8")
