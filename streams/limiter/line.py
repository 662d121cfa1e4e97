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
    def walk(self, budgets_open: Callable[[tuple[str, ...]], bool], place: Callable[[Any], tuple]
             ) -> Iterator[tuple[list[tuple], Callable[[GroupKey], None]]]:
        """For one pass: a heap of the first ask of each group whose budgets are open, as (*place, ask id,
        group), and `following(group)`, which pushes that group's next ask once the one before was looked
        at. Asks of a group need the same budgets, so a group is open or not as a whole. Asks removed
        meanwhile leave after the pass."""
        self._walking = True
        try:
            is_open: dict[tuple[str, ...], bool] = {}
            heap = []
            for key, group in self._groups.items():
                if (opened := is_open.get(key[1])) is None:
                    opened = is_open[key[1]] = budgets_open(key[1])
                if opened:
                    ask = next(iter(group.values()))
                    heap.append((*place(ask), ask.ask_id, key))
            heapq.heapify(heap)
            cursors: dict[GroupKey, Iterator[Any]] = {}

            def following(key: GroupKey) -> None:
                cursor = cursors.get(key)
                if cursor is None:  # the group's first ask was the one looked at
                    cursor = cursors[key] = iter(self._groups[key].values())
                    next(cursor)
                if (ask := next(cursor, None)) is not None:
                    heapq.heappush(heap, (*place(ask), ask.ask_id, key))

            yield heap, following
        finally:
            self._walking = False
            gone, self._gone = self._gone, []
            for ask in gone:
                self.remove(ask)
