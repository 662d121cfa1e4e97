"""streams/limiter/replies.py: the limiter's own reader takes what Faust's reply consumer would, and nothing else."""
from __future__ import annotations

from faust.agents.models import ReqRepResponse
from hypothesis import given, strategies as st

from streams.app import app
from streams.limiter.replies import answer_of


def test_an_answer_reads_as_faust_wrote_it():
    value = {"ask_id": "a1", "grant_id": "g1", "use_by": 12.5, "needs": {"openai_requests": 1.0}}
    data, _ = app.topic("blogstream-reply-x").prepare_value(
        ReqRepResponse(key=None, value=value, correlation_id="c-1"), None)
    assert answer_of(data) == ("c-1", value)


@given(st.one_of(st.none(), st.binary(max_size=200),
                 st.builds(lambda d: __import__("json").dumps(d).encode(),
                           st.dictionaries(st.sampled_from(["value", "correlation_id", "key", "x"]),
                                           st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
                                           max_size=4))))
def test_anything_else_on_the_topic_is_passed_over_never_raised(data):
    answer = answer_of(data)
    assert answer is None or (isinstance(answer[0], str) and isinstance(answer[1], dict))
