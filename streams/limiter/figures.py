"""Which of a provider's own figures (x-ratelimit-limit-*, -remaining-*) the book may follow.

The connectors keep only credible header values (connectors/ratelimit_headers.py);
this is the coordinator's own check, since the figures reach it in messages from
workers that may run another version.
"""

from __future__ import annotations


def credible_limit(provider_limit: int | float | None, our_limit: float, remaining: int | float | None) -> float | None:
    """The limit to read `remaining` against, or None when the two say nothing together.

    The provider's limit when it gives a positive one, else ours; None when
    `remaining` is missing, negative, or more than that limit (no provider has
    more left than its whole budget: such an answer is not its count).
    """
    if remaining is None or remaining < 0:
        return None
    limit = provider_limit if provider_limit is not None and provider_limit > 0 else our_limit
    return None if remaining > limit else limit
