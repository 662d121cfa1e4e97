"""What a provider does with the unused part of a call's token reservation, learned from its answers.

OpenAI charges a call its admission estimate (prompt characters / 4 +
max_tokens) when it admits it. Whether the part the call did not use comes
back to the window when the answer is complete, or stays counted for the whole
window, is not published, and providers differ. A book that settles down to
the real usage where the provider does not over-grants (429s, unfair waits);
one that never settles down wastes what the provider gives back. So the token
budget learns it from the provider's own count, `x-ratelimit-remaining-tokens`,
which comes with every answer (429s included):

- Each settled entry in the window knows both amounts, its reservation and its
  real usage. Our book under the two hypotheses differs by the sum of their
  differences (`refundable`); the provider's count (limit - remaining) lies
  near one or the other. Our book counts a little more than the provider under
  the right hypothesis (grants still on their way to it, grants it dropped
  from its window but we count for the grace longer); an answer is a vote only
  when the gap between the hypotheses is well above that, so the noise cannot
  flip it. Three votes more one way than the other decide (`EVIDENCE`), and
  the other way needs as many to go back.
- Until it is decided, every call counts its whole reservation: never more
  than the provider counts either way. A 429 for tokens whose own count says
  "kept" while the book took unused tokens as given back sends it back to that
  conservative state at once. A 429 whose count fits "given back" does not:
  the provider counted a few tokens more than our book, which the correction
  below answers. Undoing the hypothesis there cut the budget to whole
  reservations, a tenth of the tier benchmark's throughput until three
  answers had voted it back.
- The provider's count is the truth: whenever it is above our book (its
  estimate of a prompt is a little higher than ours, or someone else uses the
  same key), the difference is added to the window as a correction that counts
  for one window + grace, like a grant made at that moment, and the budget
  keeps the largest correction of the last window free as headroom for the
  calls whose answer has not shown theirs yet.

The arithmetic on the window's entries lives in streams/limiter/rates.py
(`RateBudget.settle_usage`, `on_provider_tokens`); this is the bookkeeping and
the decision.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CORRECTION = "fix:"  # grant ids of corrections: the provider counted this much more than our book
EVIDENCE = 3  # net votes that decide (and, the other way, undo) a hypothesis
EVIDENCE_CAP = 6  # votes kept at most: a provider that changed is followed within a few answers
EXPIRED_KEEP = 5.0  # seconds an answer's figure may take to reach the coordinator and still be compared exactly
MIN_GAP_SHARE = 0.02  # an answer votes only if the hypotheses differ by this share of the limit at least


def provider_count_of(entry: list, refunds: bool | None) -> float:
    """What an entry counts: its real usage once known if unused tokens come back, else its reservation."""
    if entry[7] is None or not refunds:
        return entry[6]
    return entry[7]


def is_correction(entry: list) -> bool:
    return entry[2].startswith(CORRECTION)


@dataclass
class TokenSemantics:
    """One token budget's hypothesis about unused reservations, and the sums that test it."""

    refunds: bool | None = None  # None: not known yet (count whole reservations)
    evidence: int = 0  # + votes for "kept counted", - votes for "given back"
    refundable: float = 0.0  # sum of reservation - usage over the settled entries in the window
    corrected: float = 0.0  # sum of the corrections in the window
    headroom: float = 0.0  # the largest correction of the last window: kept free
    headroom_until: float = 0.0
    corrections: int = 0  # made by this coordinator (their grant ids are unique with the time)
    last_reading: tuple = ()  # (provider's count, ours if given back, refundable, noise) of the last answer
    _expired: deque = field(default_factory=deque, repr=False)  # (left the window at, units), the last seconds

    # --- running sums over the window's entries ---------------------------------
    def note(self, entry: list) -> None:
        if is_correction(entry):
            self.corrected += entry[1]
        elif entry[7] is not None:
            self.refundable += entry[6] - entry[7]

    def forget(self, entry: list, expired_at: float | None = None) -> None:
        if expired_at is not None:  # left the window: kept a few seconds to compare with a provider's older count
            self._expired.append((expired_at, entry[1]))
            while self._expired and self._expired[0][0] < expired_at - EXPIRED_KEEP:
                self._expired.popleft()
        if is_correction(entry):
            self.corrected -= entry[1]
        elif entry[7] is not None:
            self.refundable -= entry[6] - entry[7]

    def expired_since(self, since: float) -> float:
        """Units that left the window after `since` (the last EXPIRED_KEEP seconds)."""
        total = 0.0
        for at, amount in reversed(self._expired):
            if at <= since:
                break
            total += amount
        return total

    def empty(self) -> None:
        self.refundable = self.corrected = 0.0  # no float drift on an empty window

    def expire(self, now: float) -> bool:
        if self.headroom and now >= self.headroom_until:
            self.headroom = 0.0
            return True
        return False

    def free(self) -> int:
        """Units of the limit kept free for corrections still to come."""
        return math.ceil(self.headroom)

    # --- the decision ----------------------------------------------------------------
    def reading(self, provider_used: float, book_given_back: float, noise: float, limit: float) -> bool | None:
        """Which hypothesis one answer's count is nearer: True "kept counted", False "given back", None too close.

        `book_given_back`: our book's count if unused tokens come back (no
        corrections, no grants still to start); adding `refundable` gives the
        count if they do not. `noise`: what our book may count that the
        provider does not (yet, or any more).
        """
        gap = self.refundable
        self.last_reading = (provider_used, book_given_back, gap, noise)  # for the log line when it decides
        if gap < max(MIN_GAP_SHARE * limit, 2.0 * noise, 1.0):
            return None
        return (provider_used - book_given_back) / gap > 0.5

    def vote(self, provider_used: float, book_given_back: float, noise: float, limit: float,
             throttled: bool = False) -> bool | None:
        """One answer's evidence (`throttled`: a 429 for tokens); returns the hypothesis to count by from now on."""
        kept = self.reading(provider_used, book_given_back, noise, limit)
        if kept is None:
            return self.refunds
        if throttled and kept and self.refunds:  # refused, and its count says kept: we over-granted, stop now
            self.evidence = 0
            return None
        self.evidence = max(-EVIDENCE_CAP, min(EVIDENCE_CAP, self.evidence + (1 if kept else -1)))
        if self.evidence >= EVIDENCE:
            return False
        if self.evidence <= -EVIDENCE:
            return True
        return self.refunds

    def corrected_by(self, now: float, amount: float, window: float) -> None:
        if amount >= self.headroom or now >= self.headroom_until:
            self.headroom = amount
            self.headroom_until = now + window

    # --- persistence ---------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"refunds": self.refunds, "evidence": self.evidence, "headroom": self.headroom,
                "headroom_until": self.headroom_until}

    def restore_meta(self, state: dict[str, Any]) -> None:
        refunds = state.get("refunds")
        self.refunds = None if refunds is None else bool(refunds)
        self.evidence = int(state.get("evidence", 0))
        self.headroom = float(state.get("headroom", 0.0))
        self.headroom_until = float(state.get("headroom_until", 0.0))

    def describe(self) -> str:
        return {None: "not known yet", True: "given back", False: "kept counted"}[self.refunds]
