"""The commit guard in streams/app.py: a stage partition never commits past an event nobody finished."""
from __future__ import annotations

from collections import defaultdict

from faust.types import TP

from streams.app import _FaustConsumer, _log_start, topic_name


class _Offsets:
    """The parts of faust's Consumer that `_new_offset` reads."""

    def __init__(self) -> None:
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._committed_offset = defaultdict(lambda: None)
        self._gap = defaultdict(lambda: None)

    def ack(self, tp: TP, *offsets: int) -> None:
        self._acked[tp].extend(offsets)
        self._acked_index[tp].update(offsets)

    def new_offset(self, tp: TP):
        return _FaustConsumer._new_offset(self, tp)


STAGE = TP(topic_name("blog.requests"), 6)


def test_a_partition_with_nothing_committed_does_not_commit_past_an_event_that_never_came():
    c = _Offsets()
    _log_start[(STAGE.topic, STAGE.partition)] = 0
    c.ack(STAGE, 1)  # offset 0 was never handed over (or is not done): faust would commit 2 here
    assert c.new_offset(STAGE) is None
    c.ack(STAGE, 0)
    assert c.new_offset(STAGE) == 2


def test_a_committed_partition_does_not_skip_the_one_missing_offset_faust_lets_through():
    c = _Offsets()
    c._committed_offset[STAGE] = 5
    c.ack(STAGE, 6, 7)  # faust's own check only refuses a gap of two or more
    assert c.new_offset(STAGE) is None
    c.ack(STAGE, 5)
    assert c.new_offset(STAGE) == 8


def test_other_topics_keep_faust_s_rule():
    c = _Offsets()
    other = TP("someone-elses-topic", 0)
    c.ack(other, 3, 4)
    assert c.new_offset(other) == 5
