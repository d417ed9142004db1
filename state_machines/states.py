"""Job statuses and the triggers that move between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    # A fork's pull request awaiting an operator's approval: not queued, holds no slot.
    WAITING = "waiting"
    # A pipeline's step whose needs have not all ended: not queued, holds no slot.
    BLOCKED = "blocked"
    PENDING = "pending"
    ACTIVE = "active"
    PASSED = "passed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A pipeline's step that never ran: a need failed, or its ``if`` said no.
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.PASSED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED}
)
# What a job is created in: pending (queued to run), waiting when it needs an approval, or
# blocked (a pipeline's step) until its needs have ended.
INITIAL_STATUSES = frozenset({JobStatus.PENDING, JobStatus.WAITING, JobStatus.BLOCKED})


class Trigger(StrEnum):
    APPROVE = "approve"
    ACTIVATE = "activate"
    PASS = "pass"
    FAIL = "fail"
    TIME_OUT = "time_out"
    CANCEL = "cancel"
    RETRY = "retry"
    UNBLOCK = "unblock"
    SKIP = "skip"
    # A pipeline run whose commit has a pipeline file: its steps are made, it runs them.
    EXPAND = "expand"
    # A pipeline run whose file is bad (or could not be read in time): it fails at once.
    REFUSE = "refuse"
    # An ended pipeline run some of whose steps run again (an operator's re-run): it runs
    # its steps again, its fan-in decides them.
    RERUN = "rerun"
    # An ended pipeline step that runs again (it, or a need of it, is re-run): it waits for
    # its needs again, and its run's fan-in decides it anew.
    REBLOCK = "reblock"
