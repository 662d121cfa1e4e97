"""Provider connectors: OpenAI (article), Replicate (cover image), Wix (publish).

Every connector raises only `connectors.errors.ProviderError` subclasses.
"""

from .errors import (
    ImageExpired,
    MalformedOutput,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RateLimitInfo,
    RejectedRequest,
)
from .openai_writer import ArticleResult, ArticleWriter, TokenUsage, build_messages, estimate_tokens, max_tokens_for
from .replicate_images import CoverImage, ImageMaker
from .wix_blog import PublishedPost, SiteCredentials, WixBlog, WixSite, markdown_to_ricos

__all__ = [
    "ArticleResult",
    "ArticleWriter",
    "CoverImage",
    "ImageExpired",
    "ImageMaker",
    "MalformedOutput",
    "ProviderError",
    "ProviderUnavailable",
    "PublishedPost",
    "RateLimitInfo",
    "RateLimited",
    "RejectedRequest",
    "SiteCredentials",
    "TokenUsage",
    "WixBlog",
    "WixSite",
    "build_messages",
    "estimate_tokens",
    "markdown_to_ricos",
    "max_tokens_for",
]
