"""stack/chaos.py's reading of the workers' logs."""
from __future__ import annotations

import logging

from stack.chaos import slots_released
from streams.limiter.coordinator import Coordinator


def test_the_report_reads_what_the_coordinator_took_back_from_gone_workers(caplog):
    with caplog.at_level(logging.WARNING, logger="streams.limiter.coordinator"):
        Coordinator()._log_gone({"vm-12160-29d619": [42, 180], "vm-1-a": [0, 3]})
    text = "\n".join(f"[2026-12-05 17:38:40,528] [12161] [WARNING] {r.getMessage()}" for r in caplog.records)
    assert slots_released(text) == [("vm-12160-29d619", 42, 180), ("vm-1-a", 0, 3)]
