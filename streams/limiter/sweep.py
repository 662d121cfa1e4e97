"""A round over a dict's keys, a slice per call (`Sweep`): the coordinator's once-a-second upkeep.

Why: expiring every per-site budget and slot, and pruning every idle site, each second
walked all of them at once: 37 ms a second at 10,000 sites with a Wix call each, in one
stretch of the coordinator's loop, which every permit asked meanwhile waited for (the
coordinator's CPU and the permits' p99 are to stay flat in the number of sites,
docs/bench-growth.md). Idle state may go a round later than it could; what is in use is
kept up to date by the passes themselves (each budget expires its own window when asked),
so nothing a grant depends on waits for the sweep. Written by hand: a few lines, and no
library keeps a round over a dict that changes under it.
"""
from __future__ import annotations

from typing import Collection, Hashable, Iterator

__all__ = ["Sweep"]


class Sweep:
    """Each call gives the next `share` of the keys (at least `least`; all of a small dict), so every key
    comes up within about 1 / share calls. Keys are taken as they were when a round started: ones added
    since wait for the next round; the caller skips ones gone since."""

    def __init__(self, least: int = 500, share: float = 0.1) -> None:
        self.least, self.share = least, share
        self._round: list[Hashable] = []

    def take(self, keys: Collection[Hashable]) -> Iterator[Hashable]:
        """The next slice of `keys` (a dict, or its keys view)."""
        if not self._round:
            self._round = list(keys)
        n = max(self.least, int(len(keys) * self.share))
        chunk, self._round = self._round[-n:], self._round[:-n]
        return reversed(chunk)
