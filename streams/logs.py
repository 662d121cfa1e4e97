"""The worker's log lines: Faust's text (the default), or one JSON object per line.

BLOGSTREAM_LOG_FORMAT=json makes every line a JSON object with `time` (ISO 8601, UTC),
`level`, `logger`, `message`, and the record's extra fields as keys of their own
(the heartbeat's `cycle`, `queue`, `openai_rpm_used` ...); a traceback comes as
`exc_info`. Log shippers (Loki, Elasticsearch, CloudWatch) then need no parsing rules.

How it is hooked in: Faust's worker sets logging up itself (`faust -A streams worker
-l info`), from the app's `logging_config` setting when one is given. With `"merge":
True` that dict is laid over Faust's own configuration, so the handlers Faust makes
(stderr, or `--logfile`) and the `-l` level stay as they are and only their two
formatters become `JsonLines` (`logging_config()` below, passed by streams/app.py).
Two things Faust writes outside logging are turned into JSON as well (`install()`):
the start banner (a text table) becomes one JSON line, and Python warnings become
log records.

Per-call lines of the HTTP clients (httpx writes "HTTP Request: POST ... 200 OK" at INFO for
every provider call, four per blog) are turned down to warnings (`quiet_per_call_loggers`):
at hundreds of blogs a second they cost more CPU than the rest of the log together, and
`blogstream_provider_calls_total` counts the same calls by provider and outcome.
"""
from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")


class JsonLines(JsonFormatter):
    """A log record as one JSON object: time, level, logger, message, and its extra fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            "{levelname}{name}{message}", style="{", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {"time": log_data.pop("time", None), **log_data}  # time first, as in the text lines


def logging_config(log_format: str) -> dict[str, Any] | None:
    """Faust's `logging_config` app setting for a log format (None: Faust's own text lines)."""
    if log_format != "json":
        return None
    json_lines = {"()": f"{__name__}.JsonLines"}
    # Faust's handlers use "colored" (stderr) and "default" (--logfile).
    return {"merge": True, "formatters": {"default": json_lines, "colored": json_lines}}


# Loggers that write a line per provider call at INFO: only their warnings and errors are kept.
PER_CALL_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "replicate")


def quiet_per_call_loggers() -> None:
    for name in PER_CALL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def install(log_format: str) -> None:
    """Per-call HTTP lines off; for JSON lines, the start banner and Python warnings as JSON too."""
    quiet_per_call_loggers()
    if log_format != "json":
        return
    logging.captureWarnings(True)
    from faust.cli.worker import worker as worker_command

    worker_command.on_worker_created = _banner_as_json


def _banner_as_json(command: Any, worker: Any) -> None:
    """Instead of Faust's banner table on stdout: one JSON line with its rows, on stderr with the logs."""
    worker.spinner = None  # the terminal spinner (at -l warn and above) would write between the lines
    banner = {}
    for key, value in command._banner_data(worker):  # ("id", ...), ("  transport", <driver>), ("   +", <more>) ...
        name, value = str(key), str(value).strip()
        if name.strip(" +") and value:
            banner[f"{name.strip()}_driver" if name.startswith(" ") else name] = value
    record = logging.LogRecord("faust.worker", logging.INFO, __file__, 0, "worker starting", None, None)
    record.banner = banner
    print(JsonLines().format(record), file=command.stderr, flush=True)
