"""Runs: the executor interface, starting once per attempt, the reaper, operator operations."""

from scheduler.runs.doctor import Diagnosis, Doctor
from scheduler.runs.executor import Executor, RunRequest, RunResult, RunStatus
from scheduler.runs.operations import Operations
from scheduler.runs.reaper import Reaper
from scheduler.runs.starter import RunStarter, outcome_of

__all__ = [
    "Diagnosis",
    "Doctor",
    "Executor",
    "Operations",
    "Reaper",
    "RunRequest",
    "RunResult",
    "RunStarter",
    "RunStatus",
    "outcome_of",
]
