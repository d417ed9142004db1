"""The job state machine: the transition table and what each transition means (pure).

The table is a `transitions` machine with ``auto_transitions=False``, so the table is the only
way to move. The machine is built once, with no model bound to it, and each legal
(status, trigger) pair is compiled into a frozen :class:`TransitionPlan`: deciding is a
dictionary lookup (~0.6 us, against ~70 us for a machine built per job; see
``bench/lifecycle.py``), nothing is shared or mutated between threads, and carrying the plan
out is somebody else's job (``scheduler.db.store`` turns it into one conditional write).
"""

from __future__ import annotations

from dataclasses import dataclass

from transitions import Machine

from state_machines.errors import InvalidTransition
from state_machines.states import JobStatus, Trigger

TIMED_OUT = "timed_out"
RUNNER_LOST = "runner_lost"
START_FAILED = "start_failed"
# Failures of the infrastructure, not of the job: retried automatically, apart from (and on top
# of) the repository's own retry policy.
INFRASTRUCTURE_REASONS = frozenset({RUNNER_LOST, START_FAILED})
INFRASTRUCTURE_RETRIES = 3

TRANSITION_TABLE: list[dict[str, object]] = [
    # An operator lets a fork's pull request run: it joins the queue like any new job.
    {"trigger": Trigger.APPROVE, "source": JobStatus.WAITING, "dest": JobStatus.PENDING},
    {"trigger": Trigger.ACTIVATE, "source": JobStatus.PENDING, "dest": JobStatus.ACTIVE},
    {"trigger": Trigger.PASS, "source": JobStatus.ACTIVE, "dest": JobStatus.PASSED},
    {"trigger": Trigger.FAIL, "source": JobStatus.ACTIVE, "dest": JobStatus.FAILED},
    {"trigger": Trigger.TIME_OUT, "source": JobStatus.ACTIVE, "dest": JobStatus.FAILED},
    {
        "trigger": Trigger.CANCEL,
        "source": [JobStatus.WAITING, JobStatus.PENDING, JobStatus.ACTIVE],
        "dest": JobStatus.CANCELLED,
    },
    # An operator may rebuild a cancelled job too (a new attempt of the same commit).
    {
        "trigger": Trigger.RETRY,
        "source": [JobStatus.FAILED, JobStatus.CANCELLED],
        "dest": JobStatus.PENDING,
    },
]

HOLDS_SLOT = frozenset({(JobStatus.ACTIVE, Trigger.CANCEL), (JobStatus.ACTIVE, Trigger.TIME_OUT)})
"""Transitions out of ``active`` whose run may still go (the scheduler stops it): the job keeps
its slot until the run is known stopped. A run that ended by itself (a pass, a failure, a
timeout the run reported) frees its slot in its finishing write."""

MACHINE = Machine(
    model=None,
    states=list(JobStatus),
    transitions=[{**t, "trigger": str(t["trigger"])} for t in TRANSITION_TABLE],
    initial=JobStatus.PENDING,
    auto_transitions=False,
    send_event=False,
)


@dataclass(frozen=True, slots=True)
class TransitionPlan:
    """What one legal transition does, as data.

    ``slot_delta`` is +1 when the job takes one of its repository's slots, -1 when it frees
    one; ``holds_slot`` is true when the job leaves ``active`` but keeps its slot until its run
    is known to be stopped (a cancel, the reaper's timeout: the next job must not start while
    the old run still runs); ``next_attempt`` is true when the job starts a new attempt;
    ``reason`` is the fixed failure reason a trigger implies (``timed_out``).
    """

    trigger: Trigger
    source: JobStatus
    dest: JobStatus
    slot_delta: int
    next_attempt: bool
    reason: str | None
    holds_slot: bool = False


def _compile() -> dict[tuple[JobStatus, Trigger], TransitionPlan]:
    plans: dict[tuple[JobStatus, Trigger], TransitionPlan] = {}
    for trigger in Trigger:
        event = MACHINE.events[str(trigger)]
        for source_name, transitions in event.transitions.items():
            source = JobStatus[source_name]  # Enum states are named by member name
            dest = JobStatus[str(transitions[0].dest)]
            holds_slot = (source, trigger) in HOLDS_SLOT
            slot_delta = (dest is JobStatus.ACTIVE) - (
                source is JobStatus.ACTIVE and not holds_slot
            )
            plans[(source, trigger)] = TransitionPlan(
                trigger=trigger,
                source=source,
                dest=dest,
                slot_delta=slot_delta,
                next_attempt=trigger is Trigger.RETRY,
                reason=TIMED_OUT if trigger is Trigger.TIME_OUT else None,
                holds_slot=holds_slot,
            )
    return plans


_PLANS = _compile()


def may(status: JobStatus | str, trigger: Trigger | str) -> bool:
    """Whether ``trigger`` is legal from ``status`` (no side effects)."""
    return (JobStatus(status), Trigger(trigger)) in _PLANS


def plan(status: JobStatus | str, trigger: Trigger | str, job_id: str = "?") -> TransitionPlan:
    """The plan for ``trigger`` from ``status``; :class:`InvalidTransition` if illegal."""
    found = _PLANS.get((JobStatus(status), Trigger(trigger)))
    if found is None:
        raise InvalidTransition(job_id, str(status), str(trigger))
    return found


def triggers_from(status: JobStatus | str) -> list[Trigger]:
    """The triggers that are legal from ``status``, in table order."""
    current = JobStatus(status)
    return [trigger for (source, trigger) in _PLANS if source is current]
