"""One error vocabulary for every provider connector.

The stream processors never see SDK or HTTP exceptions: each connector maps what
its provider said onto these classes, so the caller decides "retry later",
"regenerate the image" or "fail the request" from `type(exc)` / `exc.retryable`
alone, and can log `str(exc)` without leaking a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "CredentialsUnusable",
    "ImageExpired",
    "MalformedOutput",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimitInfo",
    "RateLimited",
    "RejectedRequest",
    "redact",
]


@dataclass(frozen=True)
class RateLimitInfo:
    """The provider's own view of our budget, from its `x-ratelimit-*` headers.

    Any field the provider did not send is None. Reset values are seconds until
    the window refills (OpenAI sends durations such as "6m0s" or "120ms").
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


class ProviderError(Exception):
    """Base class: a provider call did not produce a usable result.

    `retryable` says whether the same call may succeed later; `retry_after` is
    the provider's own hint in seconds (None when it gave none).
    """

    default_retryable: ClassVar[bool] = False
    # Set when the provider answered 2xx and billed the call, yet the answer is not usable
    # (cut off, malformed, refused): what it billed, so the caller can record the cost.
    billed: Any = None
    # Set when the provider said this item was not done (a bulk item it refused inside an answered call): a try
    # again needs no look-up first.
    done_nothing: bool = False

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limit: RateLimitInfo | None = None,
        retryable: bool | None = None,
    ) -> None:
        # args=(provider, message) keeps the default Exception pickling working
        # (cls(*args) then __dict__ restore), e.g. across process pools.
        super().__init__(provider, message)
        self.provider = provider
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.rate_limit = rate_limit
        self.retryable = self.default_retryable if retryable is None else retryable

    @property
    def credentials_refused(self) -> bool:
        """The provider refused our credentials (401/403): every call with them fails alike until they change."""
        return self.status in (401, 403)

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        hint = f" (retry after {self.retry_after:.3g}s)" if self.retry_after is not None else ""
        return f"{self.provider}{status}: {self.message}{hint}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, retry_after={self.retry_after!r}, message={self.message!r})"
        )


class RateLimited(ProviderError):
    """429: the provider throttled us; wait `retry_after` (if given) and retry."""

    default_retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, 408/409, timeouts, connection errors, failed predictions: transient."""

    default_retryable = True


class MalformedOutput(ProviderUnavailable):
    """The provider answered 2xx but the payload is unusable (bad JSON, missing fields).

    A subclass of ProviderUnavailable because the cure is the same - try again -
    and a second sample from the model is usually well-formed.
    """


class RejectedRequest(ProviderError):
    """A permanent 4xx (bad input, bad credentials): retrying the same call cannot help.

    The message says what an operator has to change.
    """

    default_retryable = False


class CredentialsUnusable(RejectedRequest):
    """Credentials that cannot even be sent (a key with a line break: no HTTP header carries it). Every call
    with them fails alike, as a refusal of them would, until they are changed; the message says where."""

    @property
    def credentials_refused(self) -> bool:
        return True


class ImageExpired(RejectedRequest):
    """Wix could not fetch the image URL: Replicate deletes outputs after an hour.

    Permanent for *this* URL, so not retryable as such; the caller regenerates
    the cover image and imports the new URL.
    """


# Token shapes worth scrubbing even when we do not know the exact secret:
# "Bearer <token>", OpenAI keys (sk-...), Replicate tokens (r8_...).
_SECRET_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"\br8_[A-Za-z0-9]{6,}"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove credentials from text that is about to go into an exception or log.

    Providers sometimes echo request data back in error bodies, so every message
    built from a response passes through here with the secrets the call used.
    """
    for secret in secrets:
        # Very short "secrets" (test placeholders) would shred ordinary words.
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text
