"""Unit tests: the error vocabulary."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

from connectors.errors import (
    ImageExpired,
    MalformedOutput,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RateLimitInfo,
    RejectedRequest,
    redact,
)


def test_retryability_by_class() -> None:
    assert RateLimited("openai", "x").retryable
    assert ProviderUnavailable("openai", "x").retryable
    assert MalformedOutput("openai", "x").retryable and isinstance(MalformedOutput("o", "x"), ProviderUnavailable)
    assert not RejectedRequest("wix", "x").retryable
    assert not ImageExpired("wix", "x").retryable and isinstance(ImageExpired("wix", "x"), RejectedRequest)
    assert ProviderError("wix", "x", retryable=True).retryable


def test_str_and_pickle_round_trip() -> None:
    exc = RateLimited(
        "openai", "slow down", status=429, retry_after=1.5, rate_limit=RateLimitInfo(remaining_requests=0)
    )
    assert str(exc) == "openai 429: slow down (retry after 1.5s)"
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is RateLimited
    assert (copy.provider, copy.status, copy.retry_after, copy.message) == ("openai", 429, 1.5, "slow down")
    assert copy.rate_limit == RateLimitInfo(remaining_requests=0) and copy.retryable


def test_redact_known_secrets_and_token_shapes() -> None:
    text = "key sk-proj-abcdefghijkl token r8_ABCDEFGHIJ header Authorization: Bearer abc.def site-key-123456"
    out = redact(text, ["site-key-123456", "", None])
    for secret in ("sk-proj-abcdefghijkl", "r8_ABCDEFGHIJ", "abc.def", "site-key-123456"):
        assert secret not in out
    assert out.startswith("key ***")


def test_package_exports() -> None:
    # In a fresh interpreter: under pytest's rootdir layout `connectors` may be this test package.
    root = Path(__file__).resolve().parents[2]
    code = "import connectors as c; c.ArticleWriter; c.ImageMaker; c.WixBlog; c.markdown_to_ricos; c.ImageExpired"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
