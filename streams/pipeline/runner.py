"""Runs one stage's events many at a time, fairly across sites, acking in order.

A stage reads its topic with `stream.noack()` and hands every event to a `StageRunner`, which
- keeps read-ahead events in one line per site (bounded per worker in events and in bytes), so a
  small site behind a big site's backlog in the same partition is not stuck behind it;
- starts the next event by weighted round-robin across sites, never more than a
  site's cap at once;
- moves a paused site's events out (`park`: into Postgres, store/parked.py)
  and acks them, so they hold neither their partitions' commits nor the
  read-ahead; `ParkingLot` sends them back to their topics when the site is
  resumed; while the read-ahead is full, a site at its cap gives way to the
  events finished behind it (give_way.py);
- starts nothing before the site controls are known (`load_policies`), so a
  paused site stays paused across a restart;
- acks events strictly in offset order per partition: a finished event above an
  unfinished one waits. The committed offset therefore never passes unfinished
  work, whatever order the provider calls finish in (faust #606 cannot bite).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from streams import metrics
from streams.contract.requests import PRIORITY_HEADER, site_in
from streams.pipeline.give_way import GivingWay
from streams.pipeline.retries import RETRIES, retry_delay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SitePolicy:
    weight: float = 1.0
    max_in_flight: int = 20
    paused: bool = False


class SiteHeld(Exception):
    """A step found its site held (a spend cap reached) before a paid call: the event goes back to be parked.
    Raised before anything was paid, by whoever marked the site held in the policies (the runner parks it)."""

    def __init__(self, site_id: str, reason: str) -> None:
        self.site_id, self.reason = site_id, reason
        super().__init__(f"site {site_id} is held: {reason}")


class WorkerStopping(Exception):
    """The worker is stopping: a step gave up before a provider call, nothing paid or posted. Raised by the
    stage's retry loop (stage.py) once a clean stop began; the runner leaves the event unacked for whoever owns
    its partition next. Not a failed try: it never counts towards failing the request."""


@dataclass(eq=False)
class _Entry:
    event: Any
    tp: Any
    offset: int
    site_id: str
    bulk: bool = False  # a bulk request's: started only while slots are left over for interactive ones
    size: int = 0  # bytes of its record's value, counted against the read-ahead's bytes
    done: bool = False
    failures: int = 0
    dropped: bool = False  # its partition moved to another worker


class StageRunner(GivingWay):
    instances: list["StageRunner"] = []  # every stage's runner, told about revoked partitions
    # Where a partition's events must start (its commit), and how to read it again from an offset: set by
    # streams/pipeline/factory.py for the Faust consumer. Without them a gap is only logged.
    expected_start: Callable[[Any], int | None] = staticmethod(lambda tp: None)
    rewind: Callable[[Any, int], Awaitable[None]] | None = None
    # The partitions this worker holds now, and where a partition's log ends: the stall watchdog's view.
    assigned_partitions: Callable[[], Iterable[Any]] = staticmethod(lambda: ())
    end_offset: Callable[[Any], int | None] = staticmethod(lambda tp: None)
    MAX_REWINDS = 3  # per partition and offset: an offset that never comes (deleted by retention) is given up
    REWIND_EVERY = 2.0  # seconds between rewinds of a partition to the same offset
    STALL_SECONDS, STALL_CHECK_EVERY = 30.0, 5.0  # records waiting, none delivered for this long: read it again
    # Set by streams/pipeline/deps.py for the worker's runners (None: paused sites' events wait here, unacked,
    # and nothing waits for the controls). park(stage, events) stores events of sites paused now and says
    # which it stored; the others are to run. load_policies() reads the site controls once, raising while it cannot.
    park: Callable[[str, list[Any]], Awaitable[list[bool]]] | None = None
    load_policies: Callable[[], Awaitable[None]] | None = None
    POLICY_WAIT_SECONDS = 30.0  # at start, hold events this long at most for the site controls
    PARK_BATCH = 200
    PARK_SCAN_SECONDS = 0.5  # every site with a line is checked for a pause this often; newcomers at once
    # ... unless `paused_version` says when a pause may have come: then at that moment, and this often anyway.
    PARK_FULL_SCAN_SECONDS = 30.0
    # The site's requests past this stage on this worker, not ended yet (set by factory.py for the first
    # stage, where a request takes its site's slot until its end): they count against its cap here too.
    held_later: Callable[[str], int] = staticmethod(lambda site: 0)

    def __init__(
        self,
        name: str,
        handle: Callable[[Any], Awaitable[None]],
        *,
        concurrency: int,
        read_ahead: int,
        read_ahead_bytes: int = 64 * 2**20,
        policy: Callable[[str], SitePolicy] = lambda site: SitePolicy(),
        paused_version: Callable[[], int] | None = None,
        topic: str | None = None,
    ) -> None:
        self.name = name
        self.topic = topic  # the topic it reads (the stall watchdog's partitions)
        self.handle = handle
        self.concurrency = concurrency
        # A tenth of the slots (at least one; none of one) is kept for interactive events, and for other sites:
        # one whose calls take long (Wix retrying) would come to hold every slot, whatever its cap allows.
        self.bulk_concurrency = self.site_slots = concurrency - (max(1, concurrency // 10) if concurrency > 1 else 0)
        # Events (and their records' bytes) read, not acked: a count alone let long articles take gigabytes.
        self.read_ahead, self.read_ahead_bytes = read_ahead, read_ahead_bytes
        self.policy = policy
        self.paused_version = paused_version  # changes when a site may have paused (else: every PARK_SCAN_SECONDS)
        self._scanned_version: int | None = None
        self.stream: Any = None
        self._unfinished: dict[Any, deque[_Entry]] = {}  # tp -> entries in offset order
        self._lines: dict[str, deque[_Entry]] = {}  # site -> entries not started yet
        self._ring: deque[str] = deque()  # sites with a line, in round-robin order
        self._credit: dict[str, float] = {}
        self._running: dict[str, int] = {}
        self._running_total = 0
        self._buffered = self._buffered_bytes = 0
        self._changed = asyncio.Event()
        self._last_offset: dict[Any, int] = {}  # tp -> offset of the last event read (to see gaps)
        self._rewinds: dict[Any, tuple[int, int, float]] = {}  # tp -> (offset read again from, times, when)
        self._replaying: set[Any] = set()  # partitions delivering offsets already taken (logged once)
        self._flowing_at: dict[Any, float] = {}  # tp -> when it last delivered, or had nothing waiting
        self._tasks: set[asyncio.Task] = set()
        self._parking: deque[_Entry] = deque()  # paused sites' events on their way to `park`, in order
        self._parker: asyncio.Task | None = None
        self._joined: list[str] = []  # sites that got a line since `_park_paused` last looked
        self._scanned_at = -math.inf  # when it last looked at every site with a line
        self._dispatcher: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._stopping = False  # the worker stops: no event starts any more (`stop_starting`)
        StageRunner.instances.append(self)

    # --- reading ------------------------------------------------------------
    async def consume(self, stream: Any) -> None:
        """The agent body: read events into site lines, never blocking on a provider."""
        self.stream = stream
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.ensure_future(self._dispatch())
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch_for_stalls())
        async for event in stream.noack().events():
            while self.read_ahead_full():  # the dispatcher looks for sites to give way meanwhile
                self._changed.clear()
                await self._changed.wait()
            self.add(event)

    def add(self, event: Any) -> None:
        message = event.message
        self._flowing_at[message.tp] = time.monotonic()
        if not self._in_sequence(message.tp, message.offset):
            return  # a copy of an event already taken, or one past a gap (read again after the rewind)
        site_id = site_of(event)
        entry = _Entry(event, message.tp, message.offset, site_id, _is_bulk(message), len(event.value or b""))
        self._unfinished.setdefault(message.tp, deque()).append(entry)
        line = self._line_of(site_id)
        line.append(entry)
        self._buffered += 1
        self._buffered_bytes += entry.size
        self._show_queued(site_id)
        self._changed.set()

    def read_ahead_full(self) -> bool:
        return self._buffered >= self.read_ahead or self._buffered_bytes >= self.read_ahead_bytes

    def _in_sequence(self, tp: Any, offset: int) -> bool:
        """Whether the event at `offset` is the partition's next one; a gap before it starts a rewind.

        Our stage topics hold every offset (no transactions, no compaction), so a
        partition's events start at its committed offset and come one after the
        other. Faust delivers some again after a seek (see streams/faust_fixes.py):
        an offset this runner already took is running or done, so the copy is
        dropped unacked. Should an offset ever be missing, the events past the
        gap are dropped unacked too and the partition is read again from the
        first missing offset, so the missing event is processed, not lost.
        """
        last = self._last_offset.get(tp)
        want = self._next_offset(tp)
        if want is None and self.rewind is not None:
            # Faust's consumer: a partition's start is known once it is sought to its commit. After a rebalance
            # Faust resumes partitions before that seek and handed over an offset where the last reading stopped
            # (40 of 0-49): taken as the start, 0-39 were then skipped as taken. Unacked: the seek brings it again.
            return False
        if want is not None and offset < want:
            if tp not in self._replaying:
                self._replaying.add(tp)
                log.info("%s: events of %s delivered again from offset %d; taking them from %d on",
                         self.name, tp, offset, want)
            return False
        if want is not None and offset > want and self.rewind is not None:
            asked, times, at = self._rewinds.get(tp, (None, 0, 0.0))
            now = time.monotonic()
            if asked != want or (now - at > self.REWIND_EVERY and times < self.MAX_REWINDS):
                times = times + 1 if asked == want else 1
                log.warning("%s: events of %s came at offset %d, but %d was not delivered: reading from %d again",
                            self.name, tp, offset, want, want)
                self._rewinds[tp] = (want, times, now)
                asyncio.ensure_future(self._rewind(tp, want))
                return False
            if now - at <= self.REWIND_EVERY:
                return False  # the rewind is on its way: events past the gap come again after it
            log.error("%s: events of %s skip from offset %d to %d and reading again did not bring them; "
                      "going on without them", self.name, tp, want, offset)
        if last is None:
            log.info("%s: events of %s start at offset %d", self.name, tp, offset)
        self._last_offset[tp] = offset
        self._replaying.discard(tp)
        self._rewinds.pop(tp, None)
        return True

    def _next_offset(self, tp: Any) -> int | None:
        """The offset this runner takes next from `tp`: after the last one taken, else where it must start."""
        last = self._last_offset.get(tp)
        return self.expected_start(tp) if last is None else last + 1

    def check_stalls(self, now: float) -> list[tuple[Any, int]]:
        """Read again each partition that has records past this runner's offset yet delivered none lately.

        A safety net below the fixes in streams/faust_fixes.py: should a record
        ever vanish between Kafka and the runner with nothing after it to show
        the gap, its partition would wait (its commit held) until the next
        rebalance. Partitions with nothing waiting, and a runner whose read-ahead
        is full (it stopped reading on purpose), are not stalled.
        """
        if self.rewind is None or self.topic is None or self.read_ahead_full():
            return []
        stalled = []
        for tp in self.assigned_partitions():
            if tp.topic != self.topic:
                continue
            want = self._next_offset(tp)
            end = self.end_offset(tp)
            if want is None or end is None or end <= want:
                self._flowing_at[tp] = now  # nothing waiting for us there
                continue
            since = self._flowing_at.setdefault(tp, now)
            if now - since < self.STALL_SECONDS:
                continue
            log.warning("%s: %s has records from offset %d to %d but delivered none for %.0f s: reading from %d again",
                        self.name, tp, want, end - 1, now - since, want)
            self._flowing_at[tp] = now  # the next try, if needed, after another STALL_SECONDS
            stalled.append((tp, want))
            asyncio.ensure_future(self._rewind(tp, want))
        return stalled

    async def _watch_for_stalls(self) -> None:
        while True:
            await asyncio.sleep(self.STALL_CHECK_EVERY)
            try:
                self.check_stalls(time.monotonic())
            except Exception:  # the consumer mid-rebalance, say: the next check runs on a settled one
                log.warning("%s: the stall check failed", self.name, exc_info=True)

    async def _rewind(self, tp: Any, offset: int) -> None:
        assert self.rewind is not None
        try:
            await self.rewind(tp, offset)
        except Exception:
            log.exception("%s: could not read %s again from offset %d", self.name, tp, offset)

    # --- starting -----------------------------------------------------------
    def _next(self) -> _Entry | None:
        """Deficit round-robin: each turn a site earns its weight in credits."""
        if self._running_total >= self.concurrency or self._stopping:
            return None
        only_interactive = self._running_total >= self.bulk_concurrency
        short: dict[str, float] = {}  # sites that may start but lack credit -> their weight
        entry = self._next_in_turns(only_interactive, short, earn=True)
        if entry is not None or not short:
            return entry
        # Work-conserving: free slots never wait for credits to trickle in (a weight of 0.01 needs 100
        # turns, two a second while idle). Every site that may start gets the turns the first of them
        # needs, all at once, and that one starts.
        turns = min(math.ceil((1.0 - self._credit[site]) / weight - 1e-9) for site, weight in short.items())
        for site, weight in short.items():
            self._credit[site] += turns * weight
            if self._credit[site] > 1.0 - 1e-9:
                self._credit[site] = max(self._credit[site], 1.0)
        return self._next_in_turns(only_interactive, short, earn=False)

    def _next_in_turns(self, only_interactive: bool, short: dict[str, float], *, earn: bool) -> _Entry | None:
        """Two turns of each site in ring order (`earn`: a turn earns the site its weight) until one may start."""
        for _ in range(2 * len(self._ring)):
            site_id = self._ring[0]
            policy = self.policy(site_id)
            if policy.paused or self.at_cap(site_id, policy) or (only_interactive and self._lines[site_id][0].bulk):
                self._ring.rotate(-1)
                continue
            if self._credit[site_id] < 1.0:
                self._credit[site_id] += policy.weight if earn else 0.0
                if self._credit[site_id] < 1.0:
                    short[site_id] = policy.weight
                    self._ring.rotate(-1)
                    continue
            self._credit[site_id] -= 1.0
            line = self._lines[site_id]
            entry = line.popleft()
            if not line:  # a site without a line keeps nothing here (its credit starts at 0 when it is back)
                del self._lines[site_id]
                self._ring.popleft()
                del self._credit[site_id]
            elif self._credit[site_id] < 1.0:
                self._ring.rotate(-1)
            self._show_queued(site_id)
            return entry
        return None

    async def _wait_for_policies(self) -> None:
        """Hold every event until the site controls are read once: a paused site stays paused after a restart.

        Bounded: should Postgres stay away longer than POLICY_WAIT_SECONDS,
        events start without the controls (no paid call can happen without
        Postgres anyway: each is claimed in the effect ledger first), and the
        first refresh that works applies them to every event not yet started.
        """
        if self.load_policies is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.POLICY_WAIT_SECONDS
        delay, held = 0.5, False
        while True:
            try:
                await self.load_policies()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                left = deadline - loop.time()
                if left <= 0:
                    log.error("%s: site controls (pause, caps, weights) still unreadable after %.0f s (%s); starting "
                              "events without them: a paused site's events may start until Postgres answers",
                              self.name, self.POLICY_WAIT_SECONDS, exc)
                    return
                if not held:
                    log.warning("%s: holding events until the site controls are read from Postgres (%s); "
                                "at most %.0f s more", self.name, exc, left)
                    held = True
                await asyncio.sleep(min(delay, left))
                delay = min(2 * delay, 5.0)
                continue
            if held:
                log.info("%s: site controls read; starting events", self.name)
            return

    async def _dispatch(self) -> None:
        await self._wait_for_policies()
        while True:
            self._park_paused()
            if self.read_ahead_full():
                self._give_way()
            entry = self._next()
            if entry is None:
                self._changed.clear()
                try:  # paused sites and policy changes are re-checked every second
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            self._running[entry.site_id] = self._running.get(entry.site_id, 0) + 1
            self._running_total += 1
            task = asyncio.ensure_future(self._run(entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, entry: _Entry) -> None:
        try:
            await self.handle(entry.event)
        except asyncio.CancelledError:
            raise
        except SiteHeld:  # back in its line, where the dispatcher parks it (its policy is held now)
            self._release(entry)
            self._requeue(entry, in_offset_order=True)
            return
        except WorkerStopping:  # nothing was paid: unacked, it runs where its partition goes next
            self._release(entry)
            self._requeue(entry, in_offset_order=True)
            return
        except Exception:
            # Handlers turn provider failures into outcomes themselves; this is
            # the infrastructure failing (database down, broker unreachable).
            # The event stays unacked and is tried again after a pause, so the
            # offset never passes it and nothing is lost.
            entry.failures += 1
            delay = retry_delay(entry.failures)
            log.exception("%s: event %s@%s failed, retrying in %.0f s", self.name, entry.tp, entry.offset, delay)
            metrics.stage_events.labels(self.name, "retried").inc()
            self._release(entry)
            await RETRIES.pause(delay)
            self._requeue(entry)
            return
        RETRIES.succeeded()
        self._release(entry)
        entry.done = True
        await self._ack_in_order(entry.tp)

    def _release(self, entry: _Entry) -> None:
        # Sites come and go (any producer may key records as it likes): one with nothing running keeps no entry.
        if self._running[entry.site_id] == 1:
            del self._running[entry.site_id]
        else:
            self._running[entry.site_id] -= 1
        self._running_total -= 1
        self._changed.set()

    def _requeue(self, entry: _Entry, *, in_offset_order: bool = False) -> None:
        if entry.dropped:
            return  # its partition moved to another worker meanwhile
        line = self._line_of(entry.site_id)
        if not in_offset_order:
            line.appendleft(entry)
        else:  # several that ran at once come back in any order: they are parked (and released) in offset order
            at = 0
            for index, other in enumerate(line):
                if other.tp == entry.tp:
                    if other.offset > entry.offset:
                        break
                    at = index + 1
            line.insert(at, entry)
        self._show_queued(entry.site_id)
        self._changed.set()

    def _show_queued(self, site_id: str) -> None:
        """blogstream_site_queued: the site's line now; a site without one has no series (not a 0 kept
        for every site ever seen: thousands of series per stage and worker)."""
        line = self._lines.get(site_id)
        if line:
            metrics.site_queued.labels(self.name, site_id).set(len(line))
        else:
            with contextlib.suppress(KeyError):
                metrics.site_queued.remove(self.name, site_id)

    def _line_of(self, site_id: str) -> deque[_Entry]:
        """The site's line of events not started yet; a new one joins the ring (and the next pause check)."""
        line = self._lines.get(site_id)
        if line is None:
            line = self._lines[site_id] = deque()
            self._ring.append(site_id)
            self._joined.append(site_id)
            self._credit.setdefault(site_id, 0.0)
        return line

    # --- parking (paused sites) -------------------------------------------------
    def _park_paused(self) -> None:
        """Move the lines of paused sites out to be parked; their events leave the runner.

        Before each event: the sites new in the ring, and all only when `paused_version` moved (else every
        PARK_SCAN_SECONDS): O(sites) each time. `_next` never starts a paused site's event meanwhile; parking
        lets its offsets be committed."""
        joined, self._joined = self._joined, []
        if self.park is None:
            return
        now = time.monotonic()
        version = None if self.paused_version is None else self.paused_version()
        if version is None:
            due = now - self._scanned_at >= self.PARK_SCAN_SECONDS
        else:  # every 0.5 s was 10,000 sites' policies looked up each time, on the worker's event loop
            due = version != self._scanned_version or now - self._scanned_at >= self.PARK_FULL_SCAN_SECONDS
        if due:
            self._scanned_at, self._scanned_version, looked = now, version, list(self._ring)
        else:
            looked = joined
        for site_id in [s for s in dict.fromkeys(looked) if s in self._lines and self.policy(s).paused]:
            self._parking.extend(self._lines.pop(site_id))
            self._ring.remove(site_id)
            self._credit.pop(site_id, None)
            self._show_queued(site_id)
        if self._parking and (self._parker is None or self._parker.done()):
            self._parker = asyncio.ensure_future(self._park_waiting())

    async def _park_waiting(self) -> None:
        """Park batches in order; a parked event is done (acked in offset order), a refused one runs."""
        assert self.park is not None
        failures = 0
        while self._parking:
            batch: list[_Entry] = []
            while self._parking and len(batch) < self.PARK_BATCH:
                entry = self._parking.popleft()
                if not entry.dropped:
                    batch.append(entry)
            if not batch:
                continue
            try:
                parked = await self.park(self.name, [e.event for e in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres away: they wait here, unacked, as before parking existed
                failures += 1
                delay = min(30.0, 2.0 ** failures)
                log.warning("%s: could not park %d events of paused sites (%s); trying again in %.0f s",
                            self.name, len(batch), exc, delay, exc_info=failures == 1)
                self._parking.extendleft(reversed(batch))
                await asyncio.sleep(delay)
                continue
            failures = 0
            parked_tps: set[Any] = set()
            for entry, stored in zip(batch, parked):
                if stored and not entry.dropped:
                    entry.done = True
                    parked_tps.add(entry.tp)
            for entry in reversed([e for e, stored in zip(batch, parked) if not stored]):
                self._requeue(entry)  # its site is not paused (any more): it runs
            if parked_tps:
                metrics.stage_events.labels(self.name, "parked").inc(sum(map(bool, parked)))
                log.info("%s: parked %d events of paused sites (%s)", self.name, sum(map(bool, parked)),
                         ", ".join(sorted({e.site_id for e, stored in zip(batch, parked) if stored})))
            for tp in parked_tps:
                await self._ack_in_order(tp)

    async def _ack_in_order(self, tp: Any) -> None:
        line = self._unfinished.get(tp)
        while line and line[0].done:
            entry = line.popleft()
            self._buffered -= 1
            self._buffered_bytes -= entry.size
            await self.stream.ack(entry.event)
        self._changed.set()

    # --- stopping -------------------------------------------------------------
    def stop_starting(self) -> None:
        """The worker stops: start no more events (those running finish; see stage.Stopping)."""
        self._stopping = True
        self._changed.set()

    def running_tasks(self) -> set[asyncio.Task]:
        return set(self._tasks)

    # --- rebalancing ----------------------------------------------------------
    def forget(self, revoked: set) -> None:
        """Partitions moved to another worker: drop what we have not started.

        The new owner replays from the committed offset. Calls already running
        finish (their effects are ledgered, so the replay reuses them) but are
        not acked here any more.
        """
        for tp in revoked:
            self._last_offset.pop(tp, None)
            self._rewinds.pop(tp, None)
            self._replaying.discard(tp)
            self._flowing_at.pop(tp, None)
            line = self._unfinished.pop(tp, None)
            if line:
                self._buffered -= len(line)
                self._buffered_bytes -= sum(entry.size for entry in line)
                for entry in line:
                    entry.dropped = True
        for site_id in list(self._lines):
            kept = deque(e for e in self._lines[site_id] if e.tp not in revoked)
            if kept:
                self._lines[site_id] = kept
            else:
                del self._lines[site_id]
                self._ring.remove(site_id)
                self._credit.pop(site_id, None)
            self._show_queued(site_id)  # the revoked partitions' events are the new owner's to show
        self._changed.set()

    # --- figures --------------------------------------------------------------
    def queued_by_site(self) -> dict[str, int]:
        return {site: len(line) for site, line in self._lines.items()}

    def running_by_site(self) -> dict[str, int]:
        return {site: n for site, n in self._running.items() if n}

    def wake(self) -> None:
        """Something outside changed what may start (a request of a site ended in a later stage)."""
        self._changed.set()

    def in_flight(self, site_id: str) -> int:
        """What counts against the site's cap here: its events running, and its requests in later stages."""
        return self._running.get(site_id, 0) + self.held_later(site_id)

    def at_cap(self, site_id: str, policy: SitePolicy | None = None) -> bool:
        """The site may start no more here now: its cap is reached, or its share of the stage's slots."""
        return (self._running.get(site_id, 0) >= self.site_slots
                or self.in_flight(site_id) >= (policy or self.policy(site_id)).max_in_flight)


def _is_bulk(message: Any) -> bool:
    headers = getattr(message, "headers", None) or ()
    return any(k == PRIORITY_HEADER and v == b"bulk" for k, v in (headers.items() if isinstance(headers, dict) else headers))


def site_of(event: Any) -> str:
    """The site an event is lined up, paused, held and parked under: its key, or, for a record sent without
    one (the value says the site, docs/producing.md), the site its value names ("" when none can be read).
    As site "" a paused site's unkeyed requests ran, and one a spend cap held ran again at once, forever."""
    key = event.key if event.key is not None else event.message.key
    site = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")
    return site or site_in(event.message.value) or ""
