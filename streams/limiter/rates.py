"""One budget's window of grants (`RateBudget`); a site's in-flight slots are in slots.py.

Written by hand: no rate-limiting library counts grants that start ahead of
time, expire at window + grace, settle to what a call really used, and adapt
to what the provider reports, with their state persisted per tenth of a second. The rule
they keep and the costs are in streams/limiter/book.py's docstring.
"""
from __future__ import annotations

import logging
import math
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Iterable

from streams.limiter.figures import credible_limit
from streams.limiter.tokens import CORRECTION, EXPIRED_KEEP, MIN_GAP_SHARE, TokenSemantics, provider_count_of

log = logging.getLogger(__name__)

# Grants are persisted in one table key per budget and tenth of a second. A settle rewrites its key whole: with keys
# of a second (80-2,000 grants each) that was most of the coordinator's thread with 30 s calls (bench-capacity.md).
BUCKETS_PER_SECOND = 10  # multiplied, not divided by 0.1: 10.1 s is in bucket 101, not 100
BUCKET_SECONDS = 1 / BUCKETS_PER_SECOND
_time_of = itemgetter(0)  # an entry's time: entries are [time, amount, grant id, ...]


def bucket_of(t: float) -> int:
    return int(math.floor(t * BUCKETS_PER_SECOND))


def _bucket_of_entry(entry: list) -> int:
    return bucket_of(entry[0])


class DirtyParts(set):
    """A budget's parts ("meta", a bucket's number) changed since the last persist. The first one
    also puts the budget in its book's `changed`, so a persist pass visits those budgets, not all
    (with a budget per site that visit took 0.65 ms at 10,000 sites, every few milliseconds)."""

    __slots__ = ("changed", "name")

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[str] | None = None
        self.name = ""

    def add(self, part: Any) -> None:
        if not self and self.changed is not None:
            self.changed.add(self.name)
        super().add(part)

    def enlist(self, changed: set[str], name: str) -> None:  # and now, if a part waits already
        self.changed, self.name = changed, name
        if self:
            changed.add(name)


@dataclass
class RateBudget:
    """At most `limit` units in any `window + grace` seconds (requests or tokens)."""

    name: str
    limit: int
    window: float
    grace: float
    # Spread grants evenly (GCRA at limit / span) instead of bursting at a window's start.
    paced: bool = False
    # Units each reservation carries beyond the provider's own estimate (tokens: a safety margin).
    # Dropped once the call is answered: the provider's count shows it if its estimate was higher.
    margin: float = 0.0
    # Adaptive share of `limit`: shrinks when the provider pushes back (someone
    # else uses the same key), grows back while it does not.
    factor: float = 1.0
    external: float = 0.0  # units the provider says were used that we did not grant
    external_until: float = 0.0
    throttled_at: float = -math.inf  # last multiplicative decrease
    _said_correction: float = field(default=-math.inf, repr=False)  # when a large correction was last logged
    tat: float = -math.inf  # pacing: theoretical arrival time of the next grant (GCRA)
    granted_total: float = 0.0
    # [granted_at, amount, grant_id, ask_id, site_id, lease_start, reserved, used, parts], in time order.
    # The site is kept only to report each site's share; "" means not known (an
    # entry persisted before sites were kept, or revived by a late report).
    # lease_start is None except for a lease, whose entry sits at its last usable
    # moment (so it counts long enough) but whose units may go out from lease_start.
    # `amount` is what counts now: `reserved` (the grant) until the call's real
    # usage (`used`, None before) is known, then whatever the provider is learned
    # to count (see streams/limiter/tokens.py). `parts`: how many budgets its grant
    # counts in (a re-ask is answered again only if all of them were restored: BudgetBook.granted_asks).
    entries: deque = field(default_factory=deque)
    total: float = 0.0  # sum of amounts in `entries`
    # Token budgets: what the provider does with a call's unused reservation (tokens.py).
    semantics: TokenSemantics = field(default_factory=TokenSemantics)
    index: dict = field(default_factory=dict)  # grant_id -> entry
    dirty: DirtyParts = field(default_factory=DirtyParts)  # buckets (int) or "meta" changed since the last persist
    # Entries that moved to another bucket, by the bucket they left: written in that bucket's
    # key as well until the pass that wrote them is acked (`bucket`, `persisted`).
    moved_from: dict = field(default_factory=dict)
    moved_written: dict = field(default_factory=dict)

    # --- the window ---------------------------------------------------------
    @property
    def span(self) -> float:
        return self.window + self.grace

    def _expire(self, now: float) -> None:
        span = self.span
        entries = self.entries
        while entries and entries[0][0] + span <= now:  # the same sum as next_room_at's
            entry = entries.popleft()
            self.total -= entry[1]
            self.semantics.forget(entry, expired_at=entry[0] + span)
            self.index.pop(entry[2], None)
            self.dirty.add(bucket_of(entry[0]))  # the bucket shrinks or disappears
        if not entries:
            self.total = 0.0  # no float drift on an empty window
            self.semantics.empty()
        if self.external and now >= self.external_until:
            self.external = 0.0
            self.dirty.add("meta")
        if self.semantics.expire(now):
            self.dirty.add("meta")

    def used(self, now: float) -> float:
        self._expire(now)
        return self.total

    def ahead(self, now: float) -> float:
        """Units of grants made ahead whose start is still to come (the newest entries).

        Not leases: their units may be at the provider already.
        """
        total = 0.0
        for entry in reversed(self.entries):
            if entry[0] <= now:
                break
            if entry[5] is None:
                total += entry[1]
        return total

    @staticmethod
    def _started(entry: list, now: float) -> bool:
        """Its units may have reached the provider by `now` (not a grant ahead still to start)."""
        return (entry[0] if entry[5] is None else entry[5]) <= now

    def used_in_last(self, now: float, seconds: float) -> float:
        total = 0.0
        for entry in reversed(self.entries):
            if entry[0] <= now - seconds:
                break
            if self._started(entry, now):  # not grants ahead whose start is still to come
                total += entry[1]
        return total

    def used_by_site(self, now: float, seconds: float) -> dict[str, float]:
        """Units granted in the last `seconds`, per site (sites with none left out).

        The same count as `used_in_last`, split by site; entries whose site is
        not known count there but not here. A scan, not a running sum: it only
        serves the stats, which are asked for a few times a minute, so the
        grant path stays as it was.
        """
        by_site: dict[str, float] = {}
        for entry in reversed(self.entries):
            if entry[0] <= now - seconds:
                break
            if self._started(entry, now) and entry[4] and entry[1] > 0:  # as used_in_last: not grants ahead
                by_site[entry[4]] = by_site.get(entry[4], 0.0) + entry[1]
        return by_site

    def effective_limit(self) -> float:
        """What we may use per span: our adaptive share, and never what others are seen to use.

        `factor` answers pressure we cannot see (429s); `external` is pressure
        we can (x-ratelimit-remaining-*), kept with a small margin for the
        noise in that estimate. The two are alternatives, not penalties to add.
        """
        share = math.floor(self.limit * self.factor) - self.semantics.free()
        if self.external:
            share = min(share, math.floor(self.limit - self.external - self.external_margin()))
        return max(1.0, share)

    def external_margin(self) -> float:
        """Room left unused beside someone else's traffic: the estimate is noisy by a few requests."""
        return max(2.0, 0.05 * self.limit)

    # --- pacing (GCRA) ------------------------------------------------------
    def pace_interval(self) -> float:
        return self.span / self.effective_limit() if self.paced else 0.0

    def pace_slack(self) -> float:
        """How late a pass may come without costing throughput.

        Grants follow an even schedule (one per interval, GCRA): a pass that
        wakes up late grants the ones it owes, up to this much lateness, so
        pacing costs no utilization. The same slack is the largest burst after
        an idle spell (a quarter second's worth, at least two grants), small
        enough that the window itself almost never has to step in.
        """
        return max(2 * self.pace_interval(), 0.25)

    def _pace_ok(self, now: float) -> bool:
        return not self.paced or now >= self.tat - 1e-6

    # --- decisions ----------------------------------------------------------
    def fits(self, now: float, amount: float) -> bool:
        if not self._pace_ok(now):
            return False
        limit = self.effective_limit()
        # A single ask larger than the whole budget could never fit: let it
        # through alone on an empty window rather than wait forever.
        if amount > limit:
            return self.used(now) == 0
        return self.used(now) + amount <= limit

    def next_room_at(self, now: float, amount: float, pace_lag: float = 0.0) -> float:
        """Earliest time `amount` could fit, assuming nothing else is granted.

        `pace_lag`: the grant keeps that long of the pacing schedule free for others (bulk asks, see book.py).
        """
        at = now
        if self.paced:
            at = max(at, self.tat + pace_lag)
        limit = self.effective_limit()
        excess = self.used(now) + min(amount, limit) - limit
        if amount > limit and self.entries:
            excess = self.total  # must wait for an empty window
        if excess > 0:
            freed = 0.0
            for granted_at, amt, *_ in self.entries:
                freed += amt
                if freed >= excess - 1e-9:
                    at = max(at, granted_at + self.span)
                    break
            else:
                at = max(at, self.entries[-1][0] + self.span if self.entries else now)
        return at

    def add(self, now: float, amount: float, grant_id: str, ask_id: str = "", site_id: str = "",
            until: float | None = None, parts: int = 1) -> None:
        """Count `amount` from `now`; a lease (`until` set) counts until until + span.

        `parts`: the budgets the grant counts in, this one included."""
        entry = [now, float(amount), grant_id, ask_id, site_id, None, float(amount), None, parts]
        if until is not None:
            entry[0], entry[5] = until, now
        if self.entries and self.entries[-1][0] > entry[0]:
            self._insert(entry)  # behind a late permit's entry, which counts from a later time
        else:
            self.entries.append(entry)
        self.index[grant_id] = entry
        self.total += entry[1]
        self.granted_total += entry[1]
        if self.paced:
            # A lease takes one place in the schedule: its units go out at the
            # worker's own pace, and it is capped to a fraction of the paced rate.
            slots = 1.0 if until is not None else max(1.0, amount)
            self.tat = max(self.tat, now - self.pace_slack()) + self.pace_interval() * slots
        self.dirty.add("meta")
        self.dirty.add(bucket_of(entry[0]))

    def settle(self, grant_id: str, actual: float) -> bool:
        """Replace a reservation by what really went out (never below 0): units never sent.

        For room that never reached the provider (a late answer never used, a
        lease's units not taken), so it goes back whatever the provider's rules.
        """
        entry = self.index.get(grant_id)
        if entry is None:
            return False
        actual = max(0.0, float(actual))
        self.semantics.forget(entry)
        self.total += actual - entry[1]
        entry[1] = entry[6] = actual
        entry[7] = None
        self.dirty.add(bucket_of(entry[0]))
        return True

    def settle_usage(self, grant_id: str, used: float, arrived_by: float | None = None) -> bool:
        """A call's real usage is known: it counts as the provider is learned to count it.

        Down to `used` where the provider gives unused reservation back, the
        whole reservation where it does not or while that is not known yet.
        `arrived_by`: the call reached the provider by then (its send time +
        the wire margin); it then counts until arrived_by + window, not the
        whole grace after its grant, which hands the rest of the grace on.
        """
        entry = self.index.get(grant_id)
        if entry is None:
            return False
        if arrived_by is not None and entry[5] is None and arrived_by - self.grace < entry[0]:
            self._move(entry, arrived_by - self.grace)
        self.semantics.forget(entry)
        if entry[7] is None and entry[6] - self.margin >= used:  # the provider's estimate, as near as we know it
            entry[6] -= self.margin
        entry[7] = max(0.0, float(used))
        self.semantics.note(entry)
        counted = provider_count_of(entry, self.semantics.refunds)
        self.total += counted - entry[1]
        entry[1] = counted
        self.dirty.add(bucket_of(entry[0]))
        return True

    def extend(self, now: float, grant_id: str, anchor: float, amount: float, ask_id: str = "",
               parts: int = 1) -> str:
        """A permit reached the provider late, at `anchor`: count it until anchor + window.

        Returns "ok" (counted long enough already), "extended", or "revived"
        (its entry had expired: room it held may have been handed out again).
        """
        at = anchor - self.grace  # an entry at `at` counts until anchor + window
        entry = self.index.get(grant_id)
        if entry is not None:
            if entry[0] >= at:
                return "ok"
            self._move(entry, at)
            return "extended"
        if at + self.span <= now:
            return "ok"  # it has left every window by now anyway
        entry = [at, float(amount), grant_id, ask_id, "", None, float(amount), None, parts]  # the report names no site
        self._insert(entry)
        self.index[grant_id] = entry
        self.total += entry[1]
        return "revived"

    def _move(self, entry: list, at: float) -> None:
        """Give an entry in the window a new time, a little earlier or later, keeping time order.

        Every answered call moves its entry (to when it reached the provider),
        and every late report too. `entries` is sorted by time, so its place is
        a binary search (C) and the entries of that same time; a scan with
        `index` from the oldest end (about half a window of entries) was 9 % of
        the coordinator's worker in a 3-minute tier run, most of it when the
        worker was behind and reported many sends late.
        """
        entries = self.entries
        i = entries.index(entry, bisect_left(entries, entry[0], key=_time_of))
        del entries[i]
        left = bucket_of(entry[0])
        self.dirty.add(left)
        entry[0] = at
        self._insert(entry)
        if bucket_of(at) != left:
            # Its old bucket's key is written without it, its new one with it. A coordinator
            # killed between the two would leave it in neither (the next owner counting too
            # little), so the old key carries it too until that pass is acked.
            self.moved_from.setdefault(left, {})[entry[2]] = entry

    def persisted(self) -> None:
        """The pass that took the dirty parts is acked: the buckets moved from are written without
        the entries that left them, by the next pass (their new buckets hold them durably now)."""
        for b in self.moved_written:
            self.dirty.add(b)
        self.moved_written = {}

    def _insert(self, entry: list) -> None:
        """Put an entry in time order, after the entries of its time (a binary search)."""
        self.entries.insert(bisect_right(self.entries, entry[0], key=_time_of), entry)
        self.dirty.add(bucket_of(entry[0]))

    # --- adaptation to pressure from outside ------------------------------
    def throttle_cooldown(self) -> float:
        """One decrease per this many seconds: a burst of 429s is one signal."""
        return min(self.window / 2, max(2.0, 4 * self.grace))

    def on_throttled(self, now: float) -> bool:
        """The provider said 429 although we stayed within our count: shrink."""
        if now - self.throttled_at < self.throttle_cooldown():
            return False
        self.factor = max(0.1, self.factor * 0.7)
        self.throttled_at = now
        self.dirty.add("meta")
        return True

    def stale_after(self) -> float:
        """Seconds after which a provider's answer says nothing reliable about its count now."""
        return min(5.0, self.window / 4)

    def on_remaining(self, now: float, provider_limit: int | None, remaining: int | None,
                     seen_at: float | None = None) -> None:
        """`x-ratelimit-remaining-*` lower than our own count explains: outside use.

        The provider counts arrivals in its last window when it answers. Our
        grants reach it up to `grace` later than we granted them, so we compare
        with our grants in the last window + grace: otherwise a burst of ours
        at the window's edge looks like someone else's traffic. The rest of the
        difference (grants still on their way, the answer's own trip) is noise
        of a few requests, hence the threshold.

        An answer seen more than `stale_after()` ago is not compared: a report
        that waited out a broker outage in a worker's producer describes a full
        window long gone, and read as now it made the whole budget look used by
        someone else for a window after the outage (external 134 of 150).
        """
        limit = credible_limit(provider_limit, self.limit, remaining)
        if limit is None or remaining is None:
            return
        if seen_at is not None and now - seen_at > self.stale_after():
            return
        provider_used = limit - remaining
        ours = self.used(now) - self.ahead(now)  # grants still to start have not reached it
        outside = provider_used - ours
        if outside > max(2.0, 0.02 * limit):
            self.external = min(float(self.limit) * 0.9, max(self.external * 0.5, outside))
            self.external_until = now + self.window
            self.dirty.add("meta")

    # --- token budgets: the provider's own count (streams/limiter/tokens.py) ------
    def on_provider_tokens(self, now: float, provider_limit: int | None, remaining: int | None,
                           throttled: bool = False, seen_at: float | None = None) -> bool:
        """`x-ratelimit-remaining-tokens` (and a 429 for tokens): learn what the provider counts, follow it.

        `seen_at`: when the answer came (the figure is the provider's count
        then); what left our window since is added back to compare like with
        like. Returns True when the way unused reservations count changed.
        """
        limit = credible_limit(provider_limit, self.limit, remaining)
        if limit is None or remaining is None:
            return False
        if seen_at is not None and now - seen_at > EXPIRED_KEEP:
            # Too old to compare exactly: what left our window since then is no longer known, and
            # read as now, every unit of it would look counted by the provider beyond our book
            # (a correction of seconds x the budget's rate, counted for a whole window).
            return False
        provider_used = limit - remaining
        self._expire(now)
        semantics = self.semantics
        before = semantics.refunds
        # Grants still to start are not at the provider; what we dropped since it answered, it counted then.
        seen_at = now if seen_at is None else min(now, seen_at)
        ahead = self.ahead(now) - semantics.expired_since(seen_at)
        corrected = semantics.corrected
        counted = self.total - ahead - corrected  # by the current hypothesis
        given_back = counted if semantics.refunds else counted - semantics.refundable
        state = semantics.vote(provider_used, given_back, self._unseen(now, seen_at), limit, throttled)
        if state != before:
            self.count_unused(state)
        excess = provider_used - (self.total - ahead)
        if excess > 0:  # the provider counts more than we do: it is right (beyond our whole budget, all is held)
            self._correct(now, min(excess, float(self.limit)))
            if excess > MIN_GAP_SHARE * limit and now - self._said_correction > 10.0:
                self._said_correction = now
                log.info("limiter: %s: the provider counts %.0f more than our book (%.0f of %d, answer %.1f s "
                         "old); counted for a window", self.name, excess, provider_used, limit, now - seen_at)
        return state != before

    def _unseen(self, now: float, seen_at: float) -> float:
        """Units our book counts that the provider's count at `seen_at` may not hold.

        Grants made after `seen_at - grace` may not have reached it by then;
        grants older than one window before then it may have dropped, while we
        count them for the grace longer. Only the two ends of the window are scanned.
        """
        total = 0.0
        for entry in self.entries:
            if entry[0] > seen_at - self.window:
                break
            total += entry[1]
        recent = seen_at - self.grace
        for entry in reversed(self.entries):
            if entry[0] <= recent:
                break
            if entry[0] <= now:  # grants ahead are left out by the caller already
                total += entry[1]
        return total

    def count_unused(self, refunds: bool | None) -> None:
        """Count every settled entry by a hypothesis: True, unused tokens come back; False or None, they do not."""
        self.semantics.refunds = refunds
        total = 0.0
        for entry in self.entries:
            counted = provider_count_of(entry, refunds)
            if counted != entry[1]:
                entry[1] = counted
                self.dirty.add(bucket_of(entry[0]))
            total += entry[1]
        self.total = total
        self.dirty.add("meta")

    def _correct(self, now: float, amount: float) -> None:
        """Count `amount` more from now (for window + grace): what the provider counts beyond our book."""
        self.semantics.corrections += 1
        grant_id = f"{CORRECTION}{now:.6f}:{self.semantics.corrections}"
        entry = [now, float(amount), grant_id, "", "", None, float(amount), float(amount), 1]
        if self.entries and self.entries[-1][0] > now:
            self._insert(entry)
        else:
            self.entries.append(entry)
            self.dirty.add(bucket_of(now))
        self.index[grant_id] = entry
        self.total += entry[1]
        self.semantics.note(entry)
        # Kept free for the next ones, up to the margin kept beside someone else's traffic.
        self.semantics.corrected_by(now, min(amount, self.external_margin()), self.window)
        self.dirty.add("meta")

    def recover(self, seconds: float) -> None:
        """Additive increase: back to the full budget within ~10 windows of calm."""
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + 0.1 * seconds / self.window)
            self.dirty.add("meta")

    # --- persistence ----------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "external": self.external,
            "external_until": self.external_until,
            "throttled_at": None if self.throttled_at == -math.inf else self.throttled_at,
            "tat": None if self.tat == -math.inf else self.tat,
            "granted_total": self.granted_total,
            **self.semantics.meta(),
        }

    def bucket(self, b: int) -> list[list[Any]] | None:
        """The grants of one bucket (None when it has none left: delete the key).

        Entries are in time order, so a bucket's are one run, found by binary
        search as `_move` finds an entry (a settle dirties a bucket about half
        a window back, which a scan from either end walked to in Python).
        """
        entries = self.entries
        start = bisect_left(entries, b, key=_bucket_of_entry)
        end = bisect_right(entries, b, lo=start, key=_bucket_of_entry)
        out = [list(entries[i]) for i in range(start, end)]  # a deque: islice would walk from its start
        moved = self.moved_from.pop(b, None)
        if moved or b in self.moved_written:
            moved = self.moved_written[b] = {**self.moved_written.get(b, {}), **(moved or {})}
            out += [list(e) for e in moved.values() if bucket_of(e[0]) != b and e[2] in self.index]
        return out or None

    def restore_meta(self, state: dict[str, Any]) -> None:
        self.factor = float(state.get("factor", 1.0))
        self.external = float(state.get("external", 0.0))
        self.external_until = float(state.get("external_until", 0.0))
        throttled = state.get("throttled_at")
        self.throttled_at = -math.inf if throttled is None else float(throttled)
        tat = state.get("tat")
        self.tat = -math.inf if tat is None else float(tat)
        self.granted_total = float(state.get("granted_total", 0.0))
        self.semantics.restore_meta(state)

    def restore_buckets(self, buckets: dict[int, list[list[Any]]]) -> None:
        """The entries of every key of this budget (bucket -> its entries), as the table holds them.

        A key may hold an entry of another bucket: the copy a move leaves until its pass is
        acked (`_move`), or every entry of a key written with another BUCKET_SECONDS. Both the
        entry's own bucket and that key are written again by the next pass, the key carrying
        the entry until that pass is acked, as after a move; so the key ends up canonical (or
        deleted) and the entry is never out of every key.
        """
        self.restore_entries(e for entries in buckets.values() for e in entries)
        for part, entries in buckets.items():
            for e in entries:
                entry = self.index.get(str(e[2]))
                if entry is not None and bucket_of(entry[0]) != part:
                    self.moved_from.setdefault(part, {})[entry[2]] = entry
                    self.dirty.add(part)
                    self.dirty.add(bucket_of(entry[0]))

    def restore_entries(self, entries: Iterable[list[Any]]) -> None:
        merged = sorted(_one_per_grant(entries), key=lambda e: e[0])
        self.entries = deque()
        self.index = {}
        self.total = 0.0
        self.semantics.empty()
        for e in merged:
            # Older entries lack ask id, site, lease start, reservation or usage: they count as they were, under
            # no site; and each at least as the restored meta says the provider counts (a pass cut as it changed).
            entry = [float(e[0]), float(e[1]), str(e[2]), str(e[3]) if len(e) > 3 else "",
                     str(e[4]) if len(e) > 4 else "", float(e[5]) if len(e) > 5 and e[5] is not None else None,
                     float(e[6]) if len(e) > 6 else float(e[1]), float(e[7]) if len(e) > 7 and e[7] is not None else None,
                     int(e[8]) if len(e) > 8 else 1]
            entry[1] = max(entry[1], provider_count_of(entry, self.semantics.refunds))
            self.entries.append(entry)
            self.index[entry[2]] = entry
            self.total += entry[1]
            self.semantics.note(entry)


def _one_per_grant(entries: Iterable[list[Any]]) -> list[list[Any]]:
    """Restored entries, one per grant: an entry that moved is in its old bucket's key too while
    its pass was written (RateBudget._move). Of two copies, the later time and larger amounts
    count: more than the provider may have seen, never less."""
    by_grant: dict[str, list[Any]] = {}
    for e in entries:
        e = list(e)
        known = by_grant.get(str(e[2]))
        if known is None:
            by_grant[str(e[2])] = e
            continue
        if float(e[0]) > float(known[0]):
            known, e = e, known
        known[1] = max(float(known[1]), float(e[1]))
        if len(known) > 6 and len(e) > 6:
            known[6] = max(float(known[6]), float(e[6]))
        by_grant[str(known[2])] = known
    return list(by_grant.values())
