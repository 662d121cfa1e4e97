"""The waiting asks in groups that share a place in the fair order (book.py's scheduling pass).

An ask's place is (lane, its site's service of its first budget, arrival):
asks of one site and lane that need the same budgets share the first two, so
within such a group they come in arrival order. A pass therefore needs only
each group's first eligible ask in its heap; the group's next takes its place
once that one has been looked at, and a group whose budget has no room left for
anyone is dropped whole. The heap holds groups, not asks: a site with a deep
backlog costs a pass no more than a site with one ask.
"""
from __future__ import annotations

import heapq
from contextlib import contextmanager
from typing import Any, Callable, Iterator

GroupKey = tuple[str, tuple[str, ...]]  # (fair id, the budgets it needs, the first deciding its place)


class AskGroups:
    def __init__(self) -> None:
        self._groups: dict[GroupKey, dict[str, Any]] = {}  # each in arrival order: ask id -> ask
        self._walking = False
        self._gone: list[Any] = []  # asks granted during a pass: dropped after it, not under its iterators

    @staticmethod
    def key(ask: Any) -> GroupKey:
        return ask.fair_id, tuple(ask.needs)

    def add(self, ask: Any) -> None:
        self._groups.setdefault(self.key(ask), {})[ask.ask_id] = ask

    def remove(self, ask: Any) -> None:
        if self._walking:
            self._gone.append(ask)
            return
        key = self.key(ask)
        group = self._groups.get(key)
        if group is not None:
            group.pop(ask.ask_id, None)
            if not group:
                del self._groups[key]

    def clear(self) -> None:
        self._groups.clear()
        self._gone.clear()

    @contextmanager
    def walk(self, eligible: Callable[[Any], bool], place: Callable[[Any], tuple]
             ) -> Iterator[tuple[list[tuple], Callable[[GroupKey], None]]]:
        """For one pass: a heap of each group's first eligible ask, (*place, ask id, group), and
        `following(group)`, which pushes that group's next eligible ask. Asks removed meanwhile leave after it."""
        self._walking = True
        try:
            cursors = {key: iter(group.values()) for key, group in self._groups.items()}

            def first(key: GroupKey) -> tuple | None:
                ask = next((ask for ask in cursors[key] if eligible(ask)), None)
                return None if ask is None else (*place(ask), ask.ask_id, key)

            heap = [entry for key in cursors if (entry := first(key)) is not None]
            heapq.heapify(heap)

            def following(key: GroupKey) -> None:
                if (entry := first(key)) is not None:
                    heapq.heappush(heap, entry)

            yield heap, following
        finally:
            self._walking = False
            gone, self._gone = self._gone, []
            for ask in gone:
                self.remove(ask)
