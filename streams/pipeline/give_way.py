"""Which sites give way when a stage runner's read-ahead is full (StageRunner._give_way).

Events are acked in offset order per partition, so an event that waits holds
its partition's commit, and every event finished behind it stays in the runner,
counted against the read-ahead, until it is acked. A site at its cap of requests
in flight with a backlog (its Wix down or slow, its slots all taken) held its
partition that way until its whole backlog was done, hours at worst, while the
other sites' events finished behind it filled the read-ahead: the worker stopped
reading every partition of the stage, every site's work with it.

So while the read-ahead is full, such a site gives way: its waiting events are
produced again at the end of their partition, in order, and the originals acked
once the broker has the copies (a crash in between leaves both: the effect
ledger makes the second harmless). Only waiting events move, never running ones
(a call under way is not made twice), and only of a site that cannot start more
now and has finished events behind its first waiting one; moving any other would
only send the same events round again.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence


def sites_to_move(
    lines: Mapping[str, Sequence[Any]], unfinished: Mapping[Any, Sequence[Any]], running: Mapping[str, int],
    policy: Callable[[str], Any], ring: Iterable[str],
) -> list[str]:
    """The sites (of `ring`, in its order) whose waiting events (`lines`) are to move to the end of their partitions.

    `unfinished`: each partition's events not acked yet, in offset order (`.done`,
    `.offset`); `running`: each site's events running now; `policy(site)`: its
    `paused` and `max_in_flight`. A waiting event that failed before stays (its
    tries are counted by its offset), and so does the rest of its site's line.
    """
    last_done = {tp: next((e.offset for e in reversed(line) if e.done), -1) for tp, line in unfinished.items()}
    chosen = []
    for site_id in ring:
        line, rules = lines[site_id], policy(site_id)
        if rules.paused or running.get(site_id, 0) < rules.max_in_flight:
            continue  # parked instead, or it starts its events here soon
        if line[0].offset < last_done.get(line[0].tp, -1) and not any(e.failures for e in line):
            chosen.append(site_id)
    return chosen
