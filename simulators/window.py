"""Sliding-window admission control and the per-provider ledger.

Admission rule (same as the brief / what our client-side limiter assumes):
a request arriving at ``now`` is admitted iff

    count(admitted in (now - W, now]) + 1 <= limit
    and (token windows) sum(tokens in (now - W, now]) + charge <= token_limit

Rejected requests are not recorded in the window.  Token charges can be amended
after admission (``settle``), which returns unspent reservation to the pool.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

REJECTIONS_KEPT = 10_000  # 429s a ledger lists one by one (the count goes on)


def format_duration(seconds: float) -> str:
    """Format like OpenAI's x-ratelimit-reset-* headers (Go durations): 120ms, 1s, 6m0s, 1m30.5s."""
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = rem / 1000
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{s}s"


class Entry:
    """One admitted request inside a window (also the event record)."""

    __slots__ = ("t", "tokens", "charged", "external", "site", "settled_at")

    def __init__(self, t: float, tokens: int, external: bool, site: str):
        self.t = t
        self.tokens = tokens        # current (settled) amount
        self.charged = tokens       # amount charged at admission
        self.external = external
        self.site = site
        self.settled_at: Optional[float] = None  # when `tokens` replaced `charged` (None: not settled)

    def as_event(self) -> list[Any]:
        """[admitted at, site, tokens (settled), someone else's?, tokens charged at admission, settled at]"""
        return [self.t, self.site, self.tokens, self.external, self.charged, self.settled_at]


@dataclass
class Decision:
    ok: bool
    reason: Optional[str] = None        # "requests" | "tokens" | "too_large"
    retry_after: float = 0.0            # seconds until this request would be admissible
    used_requests: int = 0
    used_tokens: int = 0


class SlidingWindow:
    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()

    def prune(self, now: float, w: float) -> None:
        cutoff = now - w
        e = self.entries
        while e and e[0].t <= cutoff:
            e.popleft()

    def count(self, now: float, w: float) -> int:
        self.prune(now, w)
        return len(self.entries)

    def tokens(self, now: float, w: float) -> int:
        self.prune(now, w)
        return sum(x.tokens for x in self.entries)

    def charged_tokens(self, now: float, w: float) -> int:
        self.prune(now, w)
        return sum(x.charged for x in self.entries)

    def check(self, now: float, w: float, limit: int, token_limit: Optional[int] = None,
              charge: int = 0) -> Decision:
        self.prune(now, w)
        n = len(self.entries)
        used_tok = sum(x.tokens for x in self.entries) if token_limit is not None else 0
        req_ok = n + 1 <= limit
        tok_ok = token_limit is None or used_tok + charge <= token_limit
        if req_ok and tok_ok:
            return Decision(True, used_requests=n, used_tokens=used_tok)
        waits = []
        reason = None
        if not req_ok:
            reason = "requests"
            k = n + 1 - int(limit)  # entries that must expire
            if limit <= 0 or k > n:
                waits.append(w)
            else:
                waits.append(self.entries[k - 1].t + w - now)
        if not tok_ok:
            if charge > token_limit:  # type: ignore[operator]
                reason = reason or "too_large"
                waits.append(w)
            else:
                reason = reason or "tokens"
                need = used_tok + charge - token_limit  # type: ignore[operator]
                freed = 0
                wait = w
                for x in self.entries:
                    freed += x.tokens
                    if freed >= need:
                        wait = x.t + w - now
                        break
                waits.append(wait)
        return Decision(False, reason, max(0.0, max(waits)), n, used_tok)

    def add(self, now: float, tokens: int = 0, external: bool = False, site: str = "-") -> Entry:
        ent = Entry(now, int(tokens), external, site)
        self.entries.append(ent)
        return ent

    def reset_requests(self, now: float, w: float) -> float:
        """Seconds until the window is completely empty (fully replenished)."""
        self.prune(now, w)
        return max(0.0, self.entries[-1].t + w - now) if self.entries else 0.0

    def reset_tokens(self, now: float, w: float) -> float:
        self.prune(now, w)
        for x in reversed(self.entries):
            if x.tokens > 0:
                return max(0.0, x.t + w - now)
        return 0.0


@dataclass
class SiteStats:
    calls: int = 0
    admitted: int = 0
    rejected_429: int = 0
    errors_5xx: int = 0
    in_progress: int = 0
    max_concurrent: int = 0
    tokens_settled: int = 0
    max_requests_in_window: int = 0

    def start(self) -> None:
        self.in_progress += 1
        self.max_concurrent = max(self.max_concurrent, self.in_progress)

    def end(self) -> None:
        self.in_progress = max(0, self.in_progress - 1)


@dataclass
class ProviderLedger:
    calls: int = 0
    admitted: int = 0
    rejected_429: int = 0
    rejected_4xx: int = 0
    errors_5xx: int = 0
    external_admitted: int = 0
    external_rejected: int = 0
    max_requests_in_window: dict[str, int] = field(default_factory=dict)     # by window name
    max_tokens_charged_in_window: int = 0     # conservative: admission charges
    max_tokens_enforced_in_window: int = 0    # what the limiter saw (settled where known)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    # Each 429 as [time, reason, requests and tokens in the window, the call's charge] (the first
    # REJECTIONS_KEPT): when and by how much the window was full, for a benchmark to read.
    rejections: list[list[Any]] = field(default_factory=list)
    per_site: dict[str, SiteStats] = field(default_factory=dict)
    events: dict[str, list[Entry]] = field(default_factory=dict)             # by window name
    extra: dict[str, Any] = field(default_factory=dict)

    def site(self, name: str) -> SiteStats:
        st = self.per_site.get(name)
        if st is None:
            st = self.per_site[name] = SiteStats()
        return st

    def record_admission(self, window_name: str, win: SlidingWindow, ent: Entry, now: float, w: float,
                         max_events: int, site_stats: Optional[SiteStats] = None) -> None:
        n = win.count(now, w)
        cur = self.max_requests_in_window.get(window_name, 0)
        if n > cur:
            self.max_requests_in_window[window_name] = n
        if site_stats is not None and n > site_stats.max_requests_in_window:
            site_stats.max_requests_in_window = n
        ev = self.events.setdefault(window_name, [])
        if len(ev) < max_events:
            ev.append(ent)

    def record_tokens(self, win: SlidingWindow, now: float, w: float) -> None:
        self.max_tokens_charged_in_window = max(self.max_tokens_charged_in_window, win.charged_tokens(now, w))
        self.max_tokens_enforced_in_window = max(self.max_tokens_enforced_in_window, win.tokens(now, w))

    def reject(self, reason: str, now: float | None = None, decision: "Decision | None" = None,
               charge: int = 0) -> None:
        self.rejected_429 += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        if now is not None and len(self.rejections) < REJECTIONS_KEPT:
            self.rejections.append([round(now, 3), reason, decision.used_requests if decision else None,
                                    decision.used_tokens if decision else None, charge])


def max_tokens_in_any_window(events: Iterable[Entry], w: float) -> int:
    """Largest sum of *final* (settled) token amounts over windows (t - W, t] ending at an admission."""
    evs = sorted(events, key=lambda e: e.t)
    best = 0
    total = 0
    lo = 0
    for hi, e in enumerate(evs):
        total += e.tokens
        while evs[lo].t <= e.t - w:
            total -= evs[lo].tokens
            lo += 1
        best = max(best, total)
    return best


def max_requests_in_any_window(events: Iterable[Entry], w: float) -> int:
    evs = sorted(e.t for e in events)
    best = 0
    lo = 0
    for hi, t in enumerate(evs):
        while evs[lo] <= t - w:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
