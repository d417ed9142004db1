"""Job statuses and the triggers that move between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    PASSED = "passed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.PASSED, JobStatus.FAILED, JobStatus.CANCELLED})


class Trigger(StrEnum):
    ACTIVATE = "activate"
    PASS = "pass"
    FAIL = "fail"
    TIME_OUT = "time_out"
    CANCEL = "cancel"
    RETRY = "retry"
