"""The requests of each site that left the first stage on this worker and have not ended here yet.

A request takes its site's in-flight slot at generate and holds it until its result (the limiter's
slots, across workers). The generate runner capped a site by its events running in generate only: with
the site's requests stuck in publish (its Wix down, each retried for minutes) it started up to its cap
of generate events more, which could only wait for a slot, each holding one of the worker's
`stage_concurrency` doing nothing; a few such sites left no slot for any other site's article. These
requests count against the site's cap in the generate runner too (StageRunner.held_later), so it starts
no event that could only wait.

Counted from the moment generate is done with a request (before its draft is even produced, so the
runner never starts the next one in between) until a result is produced for it here. Bulk requests too:
one whose article the Batch API wrote (or any article from the effect ledger) takes its slot at generate
as well (generate.py). A partition that leaves the worker takes its requests with it (another worker ends
them); the stage topics share their partition numbers.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable


class PassedOn:
    def __init__(self) -> None:
        self._requests: dict[str, tuple[str, int]] = {}  # request id -> (site, partition)
        self._by_site: Counter = Counter()
        self.on_end: Callable[[], None] = lambda: None  # told when a request ended (the first stage's runner)

    def add(self, request_id: str, site_id: str, partition: int) -> None:
        if request_id not in self._requests:
            self._requests[request_id] = (site_id, partition)
            self._by_site[site_id] += 1

    def end(self, request_id: str) -> None:
        held = self._requests.pop(request_id, None)
        if held is not None:
            self._by_site[held[0]] -= 1
            if not self._by_site[held[0]]:
                del self._by_site[held[0]]
            self.on_end()

    def count(self, site_id: str) -> int:
        return self._by_site.get(site_id, 0)

    def forget(self, partitions: set[int]) -> None:
        """Partitions gone to another worker: their requests end there."""
        for request_id in [r for r, (_, partition) in self._requests.items() if partition in partitions]:
            self.end(request_id)

    def __len__(self) -> int:
        return len(self._requests)


PASSED_ON = PassedOn()  # the worker's
