"""Job statuses and the triggers that move between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    # A fork's pull request awaiting an operator's approval: not queued, holds no slot.
    WAITING = "waiting"
    PENDING = "pending"
    ACTIVE = "active"
    PASSED = "passed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.PASSED, JobStatus.FAILED, JobStatus.CANCELLED})
# What a job is created in: pending (queued to run), or waiting when it needs an approval.
INITIAL_STATUSES = frozenset({JobStatus.PENDING, JobStatus.WAITING})


class Trigger(StrEnum):
    APPROVE = "approve"
    ACTIVATE = "activate"
    PASS = "pass"
    FAIL = "fail"
    TIME_OUT = "time_out"
    CANCEL = "cancel"
    RETRY = "retry"
