"""``scheduler logs`` and the failed run's tail in ``scheduler show``: which reader, which exit.

The CLI reads DynamoDB directly, and run output where the runtime keeps it: with a local
endpoint (the stack of this folder, or ``SCHEDULER_DYNAMODB_ENDPOINT``) the log files of the
local stack, found from the job's ``log_location`` or the data directory; against AWS the
CodeBuild build's CloudWatch Logs stream.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from scheduler.config import load_config
from scheduler.db.queries import JobDetail, Queries
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import logs_dir_in, logs_dir_of
from scheduler.runs.logs import LogChunk, LogReader, LogTarget, RunLogs
from scheduler.settings import Settings
from scheduler.wiring import mask_for_settings
from state_machines import JobStatus

__all__ = [
    "JobLogFiles",
    "JsonLines",
    "escape_controls",
    "exit_code_of",
    "for_terminal",
    "log_reader",
    "run_logs",
]

# C0 and C1 control characters and DEL, but newline and tab. A run's output is the run's, not
# the operator's: written to a terminal as is, ESC sequences would be obeyed (OSC 52 sets the
# clipboard, others retitle the window or hide lines), and so would CR, backspace and the 8-bit
# CSI (U+009B).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class JobLogFiles:
    """Local log files, in the folder the job item names (a stack may run with another
    ``--data-dir``), else in this folder's data directory."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir

    def read(self, target: LogTarget, cursor: str | None, limit: int) -> LogChunk:
        if target.log_location and Path(target.log_location).is_absolute():
            self.logs_dir = logs_dir_of(target.log_location)
        return LocalLogReader(self.logs_dir).read(target, cursor, limit)


def log_reader(settings: Settings) -> LogReader:
    if settings.dynamodb_endpoint is not None:
        return JobLogFiles(logs_dir_in(settings.data_dir))
    from scheduler.aws.build_logs import CloudWatchLogReader
    from scheduler.aws.clients import aws_client

    return CloudWatchLogReader(aws_client("logs", settings), aws_client("codebuild", settings))


def run_logs(settings: Settings, queries: Queries) -> RunLogs:
    """The logs use case as the CLI runs it, masking what the configuration says."""
    config = load_config(settings.config_path)
    return RunLogs(queries, log_reader(settings), mask_for_settings(settings, config))


def exit_code_of(job: JobDetail, attempt: int | None) -> int:
    """``--follow``'s exit status: 0 if the (followed attempt of the) job passed, else 1."""
    passed = job.status == JobStatus.PASSED.value
    return 0 if passed and (attempt is None or attempt == job.attempt) else 1


def escape_controls(text: str) -> str:
    """``text`` with each control character but newline and tab shown as ``\\xNN``."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def for_terminal(text: str, stream: TextIO | None = None) -> str:
    """``text`` (a run's output) as it may be written to ``stream`` (stdout by default):
    control characters escaped on a terminal, unchanged into a pipe or a file."""
    out = sys.stdout if stream is None else stream
    return escape_controls(text) if out.isatty() else text


# The marker RunLogs.follow writes when it goes on to an automatic retry's attempt.
_NEXT_ATTEMPT = re.compile(r"\[scheduler: attempt (\d+)\]")
# A line longer than this is written in pieces rather than held (as the text follow does).
_MAX_HELD_CHARS = 64 * 1024


class JsonLines:
    """``logs --follow --json``: one JSON object per output line, written as it comes.

    ``{"event": "line", "job_id", "attempt", "line"}`` for each line of the run's output
    (without its newline), ``{"event": "attempt", ...}`` when an automatic retry's attempt
    starts, and last ``{"event": "end", "job_id", "attempt", "status", "exit_code"}``.
    """

    def __init__(self, job_id: str, attempt: int, out: Callable[[str], None]) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._out = out
        self._held = ""

    def write(self, text: str) -> None:
        *lines, self._held = (self._held + text).split("\n")
        for line in lines:
            self._line(line)
        if len(self._held) > _MAX_HELD_CHARS:
            self._line(self._held)
            self._held = ""

    def end(self, status: str, exit_code: int) -> None:
        if self._held:
            self._line(self._held)
            self._held = ""
        self._emit("end", status=status, exit_code=exit_code)

    def _line(self, line: str) -> None:
        marker = _NEXT_ATTEMPT.fullmatch(line)
        if marker is not None and int(marker.group(1)) > self.attempt:
            self.attempt = int(marker.group(1))
            self._emit("attempt")
            return
        self._emit("line", line=line)

    def _emit(self, event: str, **fields: Any) -> None:
        data = {"event": event, "job_id": self.job_id, "attempt": self.attempt, **fields}
        self._out(json.dumps(data, sort_keys=True))
