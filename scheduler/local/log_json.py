"""``scheduler up --log-format json``: one JSON object per log line, for log shippers.

The same content as the logfmt lines of :mod:`scheduler.local.logs` (time, level, logger,
message, then every structured field), as keys of one object; a traceback goes in ``exc_info``
of the same object, so one event stays one line. A value JSON cannot hold is written as its
text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from scheduler.local.logs import extra_fields

__all__ = ["JsonFormatter"]

# Keys of the record itself: an extra field of the same name is written as ``extra.<name>``.
_OWN = ("time", "level", "logger", "message", "exc_info", "stack_info")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record):
            line[f"extra.{key}" if key in _OWN else key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=_text, ensure_ascii=False)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a log line must not be lost to a bad __str__
        return f"<unprintable {type(value).__name__}>"
