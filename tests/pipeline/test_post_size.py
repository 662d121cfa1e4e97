"""An article the pipeline takes makes a post Wix takes: at most 400 KB, as the Wix simulator checks it.

The rules for articles (streams/contract/rules.py) bound the body at 60,000 characters, but a
post's size is its Ricos document: a body of short list items or paragraphs becomes about 200
bytes of JSON per line. A topic asking for "5,000 words, one per bullet" gave an article of
~1 MB of rich content. It passed every check, the article and the cover were paid for, and Wix
refused the post (POST_TOO_LARGE) at publish, where the failure said to "run blogstream retry",
which reused the same ledgered article and failed again. It is now refused where it is written,
before it is ledgered and before the cover is paid for, saying what to change.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.wix_blog import SiteCredentials, draft_post
from simulators.config import DEFAULTS
from streams.pipeline.stage import StageFailed, check_written

MAX_POST_BYTES = int(DEFAULTS["wix"]["max_post_bytes"])  # what the Wix simulator refuses above (400 KB)
SITE = SiteCredentials("shop-1", "key", wix_member_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
COVER = {"id": "e5b1c9_" + "f" * 32 + "~mv2.png", "url": "https://static.wixstatic.com/media/" + "f" * 60 + ".png"}

LINE = st.sampled_from(["- a", "- word", "1. x", "a", "**b** *c*", "## h", "---", "", "plain text of a line",
                        "\u00e9\u00e8\u00ea", "\U0001F600", "- **a** b *c*"])


@st.composite
def articles(draw: Any) -> dict[str, Any]:
    line = draw(LINE)
    count = draw(st.sampled_from([1, 100, 2_000, 5_000, 15_000]))
    body = "\n".join([line or "x"] * count)[:60_000]
    return {"title": draw(st.sampled_from(["T", "\U0001F600" * 300])), "slug": "t",
            "excerpt": draw(st.sampled_from(["", "e" * 2000, "\u00e9" * 2000])), "body": body,
            "tags": draw(st.sampled_from([[], ["\U0001F600" * 100] * 20])), "image_prompt": "p",
            "image_alt": draw(st.sampled_from(["", "\u00e9" * 500]))}


@given(article=articles())
def test_an_article_the_stages_take_makes_a_post_wix_takes(article: dict[str, Any]) -> None:
    try:
        check_written("generate", article, "r-1", "shop-1")
    except StageFailed as failed:
        assert "article" in failed.reason and "Lower target_words or change the topic" in failed.message
        return
    draft = draft_post(SITE, title=article["title"], excerpt=article["excerpt"], body_markdown=article["body"],
                       slug="t-" + "0" * 8, tags=article["tags"], image=COVER, image_alt=article["image_alt"])
    assert len(json.dumps(draft).encode()) <= MAX_POST_BYTES  # the simulator's own measure


def test_a_long_list_of_one_word_items_is_refused_naming_the_post_size() -> None:
    article = {"title": "Glossary", "slug": "glossary", "excerpt": "", "body": "- word\n" * 5000, "tags": [],
               "image_prompt": "p", "image_alt": ""}
    with pytest.raises(StageFailed) as failed:
        check_written("generate", article, "r-1", "shop-1")
    assert "article.body: makes a Wix post of" in failed.value.reason and "at most 409600" in failed.value.reason
