"""streams/app.py: what the stages read through is bounded (docs/architecture.md, read-ahead)."""
from __future__ import annotations

import importlib

from streams.settings import settings

app_module = importlib.import_module("streams.app")  # the module: `streams.app` the attribute is the Faust app


def test_faust_buffers_a_bounded_number_of_each_stage_topics_events():
    """Faust holds up to `maxsize` events of a topic for the agent reading it (4,096 by default: 4 GB of 1-MB
    records); app.topic() drops that argument, so stage_topic sets it, and the reading clone keeps it."""
    for topic in (app_module.requests_topic, app_module.drafts_topic, app_module.illustrated_topic,
                  app_module.results_topic, app_module.dlq_topic):
        reading = topic.clone(is_iterator=True)
        assert reading.queue.maxsize == settings.stream_buffer_events == 256
