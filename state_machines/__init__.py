"""The job state machine: statuses, the transition table and its errors (pure: no I/O)."""

from state_machines.errors import (
    DomainError,
    GuardRefused,
    InvalidTransition,
    TransitionConflict,
)
from state_machines.job import (
    INFRASTRUCTURE_REASONS,
    INFRASTRUCTURE_RETRIES,
    LIFECYCLE,
    RUNNER_LOST,
    START_FAILED,
    TIMED_OUT,
    TRANSITION_TABLE,
    Effect,
    Reaction,
    Row,
    TransitionPlan,
    may,
    plan,
    plan_between,
    triggers_from,
)
from state_machines.states import INITIAL_STATUSES, TERMINAL_STATUSES, JobStatus, Trigger

__all__ = [
    "INFRASTRUCTURE_REASONS",
    "INFRASTRUCTURE_RETRIES",
    "INITIAL_STATUSES",
    "LIFECYCLE",
    "RUNNER_LOST",
    "START_FAILED",
    "TERMINAL_STATUSES",
    "TIMED_OUT",
    "TRANSITION_TABLE",
    "DomainError",
    "Effect",
    "GuardRefused",
    "InvalidTransition",
    "JobStatus",
    "Reaction",
    "Row",
    "TransitionConflict",
    "TransitionPlan",
    "Trigger",
    "may",
    "plan",
    "plan_between",
    "triggers_from",
]
