"""Structured logs for `crossinfer serve`: one JSON object per line, one line per event.

Events go through the standard `logging` module (logger ``crossinfer.serve``) so a host
application can route them; `JsonFormatter` is what the server installs on stderr.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["LOGGER_NAME", "JsonFormatter", "log_event", "logger"]

LOGGER_NAME = "crossinfer.serve"
logger = logging.getLogger(LOGGER_NAME)

_FIELDS = "crossinfer_fields"  # the LogRecord attribute carrying an event's fields


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with its fields; cheap when the level is disabled (the hot path logs DEBUG)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "event": ..., **fields}`` on one line; exceptions as text."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))
