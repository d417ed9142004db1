"""Log lines for ``scheduler up``: the message followed by the record's structured fields.

Modules log ``log.info("job transition", extra={"job_id": ..., "repo": ...})``; the stock
formatter drops those fields, so an operator would read "job transition" with no job id. The
formatter here appends every extra field as ``key=value`` after the message, in a stable order.

A record whose exception is a disk condition (ENOSPC, EDQUOT, EROFS; :mod:`scheduler.disk_space`)
is not printed with its traceback, again and again: it is handed to the process's disk
condition, which logs one line when the condition begins and one when space is back.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from scheduler.disk_space import DISK, DiskSpace

__all__ = [
    "FIELD_ORDER",
    "DiskConditionFilter",
    "StructuredFormatter",
    "configure_logging",
    "extra_fields",
]

#: Fields printed first, in this order; any other extra field follows, sorted by name.
FIELD_ORDER = ("job_id", "repo", "attempt", "transition", "actor")

_DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Everything a LogRecord carries by itself (taken from a real record, so attributes added by a
# newer Python are covered too), plus what Formatter.format sets on it while formatting.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

_FIRST = {name: position for position, name in enumerate(FIELD_ORDER)}

# Characters that would make ``key=value`` ambiguous or split a line, so the value is quoted.
_NEEDS_QUOTES = frozenset(" =\"'\\")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _text(value: Any) -> str:
    """``str(value)``, but never an exception: a log line must not be lost to a bad ``__str__``."""
    try:
        return str(value)
    except Exception:  # any failure of a foreign __str__ is survivable here
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def _quoted(text: str) -> str:
    if text and not any(char in _NEEDS_QUOTES or not char.isprintable() for char in text):
        return text
    # Values come from webhooks too (repository names, refs): escape line breaks so a hostile
    # value cannot forge a second log line.
    escaped = "".join(_ESCAPES.get(char, char) for char in text)
    return f'"{escaped}"'


def extra_fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The record's extra fields: FIELD_ORDER first, then the rest sorted by name."""
    fields = [
        (str(key), value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES
    ]
    fields.sort(key=lambda item: (_FIRST.get(item[0], len(_FIRST)), item[0]))
    return fields


class StructuredFormatter(logging.Formatter):
    """A formatter that appends the record's extra fields as ``key=value`` pairs.

    The fields go right after the message, before any traceback or stack, so one event stays
    on one line and ``grep job_id=...`` finds it.
    """

    def __init__(self, fmt: str | None = _DEFAULT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = " ".join(f"{key}={_quoted(_text(value))}" for key, value in extra_fields(record))
        return f"{line} {pairs}" if pairs else line


class DiskConditionFilter(logging.Filter):
    """Drops records whose exception is a disk condition, after noting it in ``disk`` (which
    logs the condition's transitions, once each)."""

    def __init__(self, disk: DiskSpace = DISK) -> None:
        super().__init__()
        self._disk = disk

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        try:
            where = f"{record.name}: {record.getMessage()}"
        except Exception:  # a bad message must not turn the condition into a traceback
            where = record.name
        return not self._disk.failed(exc, where)


class _StructuredHandler(logging.StreamHandler[IO[str]]):
    """The handler configure_logging installs; its class is how a second call finds it."""


def configure_logging(
    level: int = logging.INFO, stream: IO[str] | None = None, *, log_format: str = "logfmt"
) -> None:
    """Send the root logger's records to ``stream`` (default: stderr) as structured lines.

    Idempotent: a second call replaces the handler a first call installed rather than adding
    another (so no line is printed twice). Handlers installed by others are left alone.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StructuredHandler):
            root.removeHandler(existing)
            existing.close()
    handler = _StructuredHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":  # one JSON object per line (scheduler up --log-format json)
        from scheduler.local.log_json import JsonFormatter  # it builds on this module

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(StructuredFormatter())
    handler.addFilter(DiskConditionFilter())
    root.addHandler(handler)
    root.setLevel(level)
