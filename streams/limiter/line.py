"""The waiting asks in groups that share a place in the fair order (book.py's scheduling pass).

An ask's place is (lane, its site's service of its first budget, arrival):
asks of one site and lane that need the same budgets share the first two, so
within such a group they come in arrival order. A pass therefore needs only
each group's first ask; the group's next takes its place once that one has
been looked at. A site with a deep backlog costs a pass no more than a site
with one ask.

The groups' first asks are kept in one heap per kind (the budgets its asks
need) from pass to pass, not built again by each pass: a pass opens the kinds
whose budgets have room, takes groups from their heaps in fair order only as
far as it goes, and puts back the groups it took. A pass that grants one ask
(a saturated paced budget: every pass) then costs O(kinds + log groups), not
O(groups). Hand-written because no library keeps a fair-queuing line like
this; tests/limiter/test_line.py checks it grants what one heap of every
waiting ask grants.

Places only grow while an ask waits (a site's service rises with its grants),
so a kept entry's place is at most its group's true place: a heap top whose
place has grown is put back at its new place before it is taken (lazy
correction), and the true fairest group still comes first.
"""
from __future__ import annotations

import heapq
from contextlib import contextmanager
from typing import Any, Callable, Iterator

GroupKey = tuple[str, tuple[str, ...]]  # (fair id, the budgets its asks need)
Kind = tuple[str, ...]  # the budgets a group's asks need, in order (the first decides the place)
Entry = tuple  # (*place, ask id, group key): place = (lane rank, service, seq)


class _Kind:
    __slots__ = ("heap", "groups")

    def __init__(self) -> None:
        self.heap: list[Entry] = []  # one live entry per group not taken by a pass, plus stale ones
        self.groups: set[GroupKey] = set()


class AskGroups:
    def __init__(self, place: Callable[[Any], tuple]) -> None:
        self._place = place  # an ask's place in the fair order (BudgetBook._fair_key)
        self._groups: dict[GroupKey, dict[str, Any]] = {}  # each in arrival order: ask id -> ask
        self._kinds: dict[Kind, _Kind] = {}
        self._listed: dict[GroupKey, Entry] = {}  # each group's live entry in its kind's heap
        self._walking = False
        self._gone: list[Any] = []  # asks granted during a pass: dropped after it, not under its iterators
        self._new: list[GroupKey] = []  # groups made during a pass: listed after it

    @staticmethod
    def key(ask: Any) -> GroupKey:
        return ask.fair_id, tuple(ask.needs)

    def _list(self, key: GroupKey, group: dict[str, Any]) -> None:
        """Put the group's first ask in its kind's heap, as the group's one live entry."""
        ask = next(iter(group.values()))
        entry = self._listed[key] = (*self._place(ask), ask.ask_id, key)
        kind = self._kinds[key[1]]
        heapq.heappush(kind.heap, entry)
        if len(kind.heap) > 2 * len(kind.groups) + 32:  # mostly stale: keep the live entries only
            kind.heap[:] = [self._listed[k] for k in kind.groups if k in self._listed]
            heapq.heapify(kind.heap)

    def add(self, ask: Any) -> None:
        key = self.key(ask)
        group = self._groups.get(key)
        if group is not None:
            group[ask.ask_id] = ask  # behind the first: its entry stands
            return
        self._groups[key] = {ask.ask_id: ask}
        self._kinds.setdefault(key[1], _Kind()).groups.add(key)
        if self._walking:  # listed after the pass, with the groups it took
            self._new.append(key)
        else:
            self._list(key, self._groups[key])

    def remove(self, ask: Any) -> None:
        if self._walking:
            self._gone.append(ask)
            return
        key = self.key(ask)
        group = self._groups.get(key)
        if group is None or ask.ask_id not in group:
            return
        first = next(iter(group)) == ask.ask_id
        del group[ask.ask_id]
        if not group:
            del self._groups[key]
            self._listed.pop(key, None)  # its entry goes stale
            kind = self._kinds[key[1]]
            kind.groups.discard(key)
            if not kind.groups:
                del self._kinds[key[1]]
        elif first and key in self._listed:
            self._list(key, group)

    def has_kind(self, kind: Kind) -> bool:
        """Whether an ask of this kind waits (kind (): asks for a site's slot alone, which need no budget)."""
        return kind in self._kinds

    def clear(self) -> None:
        self._groups.clear()
        self._kinds.clear()
        self._listed.clear()
        self._gone.clear()
        self._new.clear()

    @contextmanager
    def walk(self, budgets_open: Callable[[Kind], bool]) -> Iterator["Walk"]:
        """One pass over the groups whose budgets are open (`budgets_open(kind)`), fairest first.
        Asks removed meanwhile leave after the pass; the groups taken go back to their heaps."""
        self._walking = True
        walk = Walk(self, [kind for kind in self._kinds if budgets_open(kind)])
        try:
            yield walk
        finally:
            self._walking = False
            gone, self._gone = self._gone, []
            for ask in gone:
                self.remove(ask)
            new, self._new = self._new, []
            for key in (*walk.taken, *new):
                if key not in self._listed and (group := self._groups.get(key)):
                    self._list(key, group)


class Walk:
    """A pass's view of the line: `pop` the fairest entry, `push` one back, `following` a group's next ask,
    `close` a kind nobody else of which can be granted in this pass."""

    def __init__(self, groups: AskGroups, kinds: list[Kind]) -> None:
        self._line = groups
        self.heap: list[Entry] = []
        self.taken: list[GroupKey] = []  # groups taken from their kind's heap (back after the pass)
        self._front: dict[Kind, Entry] = {}  # each open kind's group now in the pass's heap, taken last
        self._cursors: dict[GroupKey, Iterator[Any]] = {}
        for kind in kinds:
            self._take(kind)

    def _take(self, kind: Kind) -> None:
        """Move the kind's fairest group, at its true place, into the pass's heap."""
        line = self._line
        held = line._kinds.get(kind)
        heap = held.heap if held is not None else []
        while heap:
            entry = heapq.heappop(heap)
            key = entry[-1]
            if line._listed.get(key) is not entry:
                continue  # stale: its group left, or has a newer entry
            ask = next(iter(line._groups[key].values()))
            place = line._place(ask)
            if place > entry[:-2]:  # served meanwhile: back at its true place first
                fresh = line._listed[key] = (*place, ask.ask_id, key)
                heapq.heappush(heap, fresh)
                continue
            del line._listed[key]
            self.taken.append(key)
            self._front[kind] = entry
            heapq.heappush(self.heap, entry)
            return
        self._front.pop(kind, None)

    def pop(self) -> Entry | None:
        if not self.heap:
            return None
        entry = heapq.heappop(self.heap)
        kind = entry[-1][1]
        if self._front.get(kind) is entry:  # its kind's next group may come before anything left
            self._take(kind)
        return entry

    def push(self, entry: Entry) -> None:
        heapq.heappush(self.heap, entry)

    def close(self, kind: Kind) -> None:
        """No group of this kind can be granted for the rest of the pass: take no more of them."""
        self._front.pop(kind, None)

    def following(self, key: GroupKey, passed_over: Callable[[Any], bool] | None = None) -> None:
        """Push the group's next ask, once the one before it was looked at; the asks `passed_over` says
        the pass cannot grant (its site's slots are full) are not looked at."""
        cursor = self._cursors.get(key)
        if cursor is None:  # the group's first ask was the one looked at
            cursor = self._cursors[key] = iter(self._line._groups[key].values())
            next(cursor)
        ask = next(cursor, None)
        while ask is not None and passed_over is not None and passed_over(ask):
            ask = next(cursor, None)
        if ask is not None:
            heapq.heappush(self.heap, (*self._line._place(ask), ask.ask_id, key))
