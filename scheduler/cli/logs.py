"""``scheduler logs`` and the failed run's tail in ``scheduler show``: which reader, which exit.

The CLI reads DynamoDB directly, and run output where the runtime keeps it: with a local
endpoint (the stack of this folder, or ``SCHEDULER_DYNAMODB_ENDPOINT``) the log files of the
local stack, found from the job's ``log_location`` or the data directory; against AWS the
CodeBuild build's CloudWatch Logs stream.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

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
