"""The room bulk asks leave free for interactive ones (book.py's lanes).

Bulk work is served only with what interactive asks leave, but on a budget
that bulk work keeps full, an interactive ask that arrives must still wait
for the next unit to free up (and, on a paced budget, for the next pacing
slot). So a bulk ask also leaves free what interactive asks took of that
budget in the last SECONDS (at most SHARE of its limit) and one pacing
interval: an interactive ask arriving meanwhile finds room at once. Without
interactive traffic the reserve is empty and bulk uses every unit.
"""
from __future__ import annotations

from collections import deque
from typing import Any


class InteractiveReserve:
    SECONDS = 1.0
    SHARE = 0.1

    def __init__(self) -> None:
        self._recent: dict[str, deque[tuple[float, float]]] = {}  # budget -> (grant time, amount)
        self._total: dict[str, float] = {}

    def took(self, budget: str, at: float, amount: float) -> None:
        """An interactive ask was granted `amount` of `budget` at `at`."""
        self._recent.setdefault(budget, deque()).append((at, amount))
        self._total[budget] = self._total.get(budget, 0.0) + amount

    def amount(self, budget: str, now: float, limit: float) -> float:
        """What bulk asks must leave free of `budget` now."""
        recent = self._recent.get(budget)
        if not recent:
            return 0.0
        while recent and recent[0][0] <= now - self.SECONDS:
            self._total[budget] -= recent.popleft()[1]
        if not recent:
            del self._recent[budget], self._total[budget]
            return 0.0
        return min(self._total[budget], self.SHARE * limit)

    def bulk_room(self, budget: str, rate: Any, amount: float, now: float) -> tuple[float, float]:
        """(the room a bulk ask of `amount` needs, the pacing it leaves free) on `budget` (a RateBudget)."""
        reserve = self.amount(budget, now, rate.effective_limit())
        if reserve <= 0:
            return amount, 0.0
        return min(amount + reserve, max(amount, rate.effective_limit())), rate.pace_interval()

    def shrinks_at(self, budget: str) -> float | None:
        """When the reserve of `budget` next gets smaller (None: it is empty)."""
        recent = self._recent.get(budget)
        return recent[0][0] + self.SECONDS if recent else None
