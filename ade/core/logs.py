"""Process logging: plain text, or JSON lines (`ADE_LOG_FORMAT=json`, python-json-logger), with the
`run_id` / `build_id` being worked on stamped on every record logged while it is."""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

current_run_id: ContextVar[str | None] = ContextVar("current_run_id", default=None)
current_build_id: ContextVar[str | None] = ContextVar("current_build_id", default=None)


class StreamContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = current_run_id.get()
        record.build_id = current_build_id.get()
        return True


def configure() -> None:
    level = os.environ.get("ADE_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler()
    handler.addFilter(StreamContext())
    if os.environ.get("ADE_LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(run_id)s %(build_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
