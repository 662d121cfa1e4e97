"""The budgets the limiter keeps, by name, and their limits from the settings.

Stages name what a provider call needs with these (`{OPENAI_REQUESTS: 1,
OPENAI_TOKENS: estimate}`); the coordinator builds its book from `rate_specs()`.
"""
from __future__ import annotations

from typing import Any

from streams.settings import settings

OPENAI_REQUESTS = "openai_requests"
OPENAI_TOKENS = "openai_tokens"
REPLICATE_REQUESTS = "replicate_requests"  # creates (Replicate: 600/min)
REPLICATE_OTHER_REQUESTS = "replicate_other_requests"  # every other endpoint: polls, cancels (3000/min)
WIX_REQUESTS_PREFIX = "wix_requests:"
# Tokens each OpenAI reservation carries beyond the provider's own admission estimate
# (connectors/openai_writer.py's ESTIMATE_SAFETY_TOKENS; tests/limiter keeps the two equal).
# Once a call is answered the provider's count shows whether its estimate was higher.
OPENAI_ESTIMATE_MARGIN = 16


def wix_requests(site_id: str) -> str:
    """Wix limits each site (app instance) on its own: one budget per site."""
    return f"{WIX_REQUESTS_PREFIX}{site_id}"


def rate_specs() -> dict[str, dict[str, Any]]:
    window = settings.budget_window_seconds
    paced = settings.budget_pacing
    return {
        OPENAI_REQUESTS: {"limit": settings.openai_rpm, "window": window, "paced": paced},
        OPENAI_TOKENS: {"limit": settings.openai_tpm, "window": window, "margin": OPENAI_ESTIMATE_MARGIN},
        REPLICATE_REQUESTS: {"limit": settings.replicate_rpm, "window": window, "paced": paced},
        REPLICATE_OTHER_REQUESTS: {"limit": settings.replicate_other_rpm, "window": window, "paced": paced},
        WIX_REQUESTS_PREFIX: {"limit": settings.wix_site_rpm, "window": window, "paced": paced,
                              "lease_seconds": settings.permit_site_lease_seconds},
    }


def wire_margin() -> float:
    """From our socket to the provider counting the request, at most (streams/limiter/wire.py's WIRE_MARGIN).

    BLOGSTREAM_PERMIT_WIRE_MARGIN_SECONDS; at most a third of the grace (a larger one set is refused)."""
    return min(settings.permit_wire_margin_seconds, settings.permit_grace_seconds / 3)


def span_seconds() -> float:
    """How long a grant counts: one window, plus the grace a permit has to reach the provider."""
    return settings.budget_window_seconds + settings.permit_grace_seconds
