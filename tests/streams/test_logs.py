"""JSON log lines (BLOGSTREAM_LOG_FORMAT=json): the formatter, and Faust's own logging set-up taking it
from the app's logging_config without losing its handlers or the -l level."""
from __future__ import annotations

import io
import json
import logging

import pytest
from mode.utils import logging as mode_logging

from streams import logs


def format_one(formatter: logging.Formatter, **extra) -> dict:
    record = logging.LogRecord("streams.x", logging.WARNING, __file__, 1, "queue %d", (5,), None)
    record.__dict__.update(extra)
    return json.loads(formatter.format(record))


def test_a_record_is_one_json_object_with_its_extra_fields():
    line = format_one(logs.JsonLines(), cycle=3, queue=5)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert (line["level"], line["logger"], line["message"], line["cycle"], line["queue"]) == (
        "WARNING", "streams.x", "queue 5", 3, 5)
    assert line["time"].endswith("+00:00")


def test_text_keeps_faust_and_json_replaces_only_its_formatters():
    assert logs.logging_config("text") is None
    config = logs.logging_config("json")
    assert config["merge"] is True and set(config) == {"merge", "formatters"}


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_faust_setup_logging_with_the_json_config_writes_json_at_the_chosen_level(restore_root_logging, tmp_path):
    path = tmp_path / "worker.log"
    # what `faust worker -l warning -f worker.log` does with the app's logging_config (a copy: faust pops "merge")
    mode_logging.setup_logging(loglevel="warning", logfile=str(path), logging_config=dict(logs.logging_config("json")))
    logging.getLogger("streams.y").info("not at this level")
    logging.getLogger("streams.y").warning("shown", extra={"site": "shop-1"})
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["message"], r["site"]) for r in lines] == [("shown", "shop-1")]


def test_faust_setup_logging_on_a_stream_too(restore_root_logging):
    mode_logging.setup_logging(loglevel="info", logfile=None, logging_config=dict(logs.logging_config("json")))
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler.formatter, logs.JsonLines)
    stream = io.StringIO()
    handler.setStream(stream)
    logging.getLogger("streams.z").info("hello")
    assert json.loads(stream.getvalue())["message"] == "hello"


def test_per_call_http_lines_are_off_at_info_but_warnings_stay(restore_root_logging):
    # httpx writes "HTTP Request: POST ... 200 OK" at INFO for every provider call: four lines per blog.
    saved = {name: logging.getLogger(name).level for name in logs.PER_CALL_LOGGERS}
    try:
        mode_logging.setup_logging(loglevel="info", logfile=None, logging_config=None)
        logs.install("text")
        stream = io.StringIO()
        logging.getLogger().handlers[0].setStream(stream)
        logging.getLogger("httpx").info('HTTP Request: POST http://x/openai/v1/chat/completions "HTTP/1.1 200 OK"')
        logging.getLogger("httpx").warning("a connection was reset")
        logging.getLogger("streams.z").info("a line of ours")
        text = stream.getvalue()
        assert "HTTP Request" not in text
        assert "a connection was reset" in text and "a line of ours" in text
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
