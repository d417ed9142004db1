"""The local runtime's :class:`~scheduler.runs.logs.LogReader`: log files under the data dir.

The path comes from the job id and the attempt through :func:`log_file` (the executor's own
naming rule), never from the request or the job item, so nothing outside the logs folder can
be read. The cursor is a byte offset into the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from scheduler.errors import InvalidArgument, LogNotFound
from scheduler.local.run_log import log_file
from scheduler.runs.logs import LogChunk, LogTarget

__all__ = ["LocalLogReader"]


class LocalLogReader:
    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir

    def read(self, target: LogTarget, cursor: str | None, limit: int) -> LogChunk:
        path = log_file(self.logs_dir, target.job_id, target.attempt)
        offset = _offset(cursor)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset)
                data = handle.read(max(0, limit))
        except FileNotFoundError:
            raise LogNotFound(
                target.job_id, target.attempt, "not started, or removed with the job's retention"
            ) from None
        except OSError as exc:
            raise LogNotFound(target.job_id, target.attempt, exc.strerror or "unreadable") from None
        end = offset + len(data)
        return LogChunk(data, str(end), more=end < size)


def _offset(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not (cursor.isascii() and cursor.isdecimal() and len(cursor) <= 20):
        raise InvalidArgument("log cursor must be a byte offset")
    return int(cursor)
