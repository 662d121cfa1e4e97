"""stack/chaos.py's reading of the workers' logs."""
from __future__ import annotations

import logging

from stack.chaos import holder_named, slots_released
from streams.limiter.coordinator import Coordinator


def test_the_report_reads_what_the_coordinator_took_back_from_gone_workers(caplog):
    with caplog.at_level(logging.WARNING, logger="streams.limiter.coordinator"):
        Coordinator()._log_gone({"vm-12160-29d619": [42, 180], "vm-1-a": [0, 3]})
    text = "\n".join(f"[2026-12-05 17:38:40,528] [12161] [WARNING] {r.getMessage()}" for r in caplog.records)
    assert slots_released(text) == [("vm-12160-29d619", 42, 180), ("vm-1-a", 0, 3)]


def test_a_stuck_claims_holder_is_named_by_its_workers_process_id():
    names = {10129: "chaos-w3"}
    assert holder_named("vm-10129-f99fb2", names) == "vm-10129-f99fb2 (chaos-w3)"
    assert holder_named("build-host-7-10129-f99fb2", names) == "build-host-7-10129-f99fb2 (chaos-w3)"   # dashes
    assert holder_named("vm-4242-f99fb2", names) == "vm-4242-f99fb2"   # a worker gone before the run
    assert holder_named("oddname", names) == "oddname"
