"""The capacity benchmark's report (stack/bench_capacity.py): the figures issue 13 asks for, its plots,
and the hand-written part of the doc kept across runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from stack import bench_capacity


def result() -> dict:
    samples = [(0.25 * i, 120.0 + i, 0.2 * i) for i in range(40)]
    return {"requests": 100, "sites": 5, "counts": {"DONE": 100}, "wall": 10.0, "blogs_per_s": 10.0,
            "cpu_ms_per_blog": 8.0, "worker_cpu_s": 0.8, "worker_cores": 0.08, "sim_cpu_ms_per_blog": 1.5,
            "sim_cores": 0.015, "peak_rss_mb": 160.0, "load": (1.0, 1.5), "cores": 2,
            "samples": samples, "finished_at": [0.1 * i for i in range(100)],
            "permits": {"all": 360.0, "permits_leased": 210.0, "permit_late_sends": 5.0, "permits_expired": 0.0,
                        "permit_reasks": 1.0}}


def test_the_report_states_every_figure_of_the_issue():
    text = bench_capacity.report(result(), None, ["bench-capacity-completions.png"])
    for figure in ("10.0 blogs/s", "8.0 ms", "160 MB", "1.5 ms (0.01 cores)", "Load average 1.0",
                   "| 3.60 / 2.10 / 0.05 / 0.00 / 0.01 |",
                   "![bench-capacity-completions.png](bench-capacity-completions.png)"):
        assert figure in text


def test_plots_are_written_next_to_the_doc(tmp_path: Path):
    pytest.importorskip("matplotlib")
    names = bench_capacity.plot(result(), tmp_path / "bench-capacity.md")
    assert names == ["bench-capacity-completions.png", "bench-capacity-rss.png"]
    for name in names:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_the_hand_written_part_of_the_doc_is_kept(tmp_path: Path):
    doc = tmp_path / "bench-capacity.md"
    doc.write_text("old figures\n" + bench_capacity.KEEP_MARK + "\n## History\nbefore: 13.5 ms\n")
    bench_capacity.write_doc(doc, "new figures\n")
    assert doc.read_text() == "new figures\n\n" + bench_capacity.KEEP_MARK + "\n## History\nbefore: 13.5 ms\n"
