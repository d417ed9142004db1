"""``scheduler logs`` and the failed run's tail in ``scheduler show``: which reader, which exit.

The CLI reads DynamoDB directly, and run output where the runtime keeps it: with a local
endpoint (the stack of this folder, or ``SCHEDULER_DYNAMODB_ENDPOINT``) the log files of the
local stack, found from the job's ``log_location`` or the data directory; against AWS the
CodeBuild build's CloudWatch Logs stream.
"""

from __future__ import annotations

from pathlib import Path

from scheduler.config import load_config
from scheduler.db.queries import JobDetail, Queries
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import logs_dir_in, logs_dir_of
from scheduler.runs.logs import LogChunk, LogReader, LogTarget, RunLogs
from scheduler.settings import Settings
from scheduler.wiring import mask_for_settings
from state_machines import JobStatus

__all__ = ["JobLogFiles", "exit_code_of", "log_reader", "run_logs"]


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
