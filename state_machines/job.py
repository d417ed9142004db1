"""The job state machine: the lifecycle as one table of rows, each saying what it means (pure).

Each :class:`Row` names a transition (trigger, sources, destination) and everything that
follows from it, as data: how it moves its repository's slots, whether the job keeps its slot
until its run is known stopped, whether it starts a new attempt, the failure reason it implies,
what it writes on the job item besides its status (:class:`Effect`) and what the stream (or the
reconciliation, when the record is lost) does once it is written (:class:`Reaction`). The store
turns effects into one conditional write and the stream's ``decide`` turns reactions into
actions; neither spells out the lifecycle again, so a new state is new rows here.

The table is also a `transitions` machine with ``auto_transitions=False`` (so the table is the
only way to move), built once with no model bound to it; each legal (status, trigger) pair is
compiled into a frozen :class:`TransitionPlan`: deciding is a dictionary lookup (~0.6 us,
against ~70 us for a machine built per job; see ``bench/lifecycle.py``), and nothing is shared
or mutated between threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from transitions import Machine

from state_machines.errors import InvalidTransition
from state_machines.states import JobStatus, Trigger

TIMED_OUT = "timed_out"
RUNNER_LOST = "runner_lost"
START_FAILED = "start_failed"
PIPELINE_INVALID = "pipeline_invalid"
PIPELINE_UNAVAILABLE = "pipeline_unavailable"
STEPS_FAILED = "steps_failed"
# Failures of the infrastructure, not of the job: retried automatically, apart from (and on top
# of) the repository's own retry policy.
INFRASTRUCTURE_REASONS = frozenset({RUNNER_LOST, START_FAILED})
INFRASTRUCTURE_RETRIES = 3


class Effect(StrEnum):
    """What a transition writes on the job item besides its status, version and history
    (``scheduler.db.store`` spells each one out as attribute updates)."""

    # Queued (again): attempt and backoff set, in the queue index, the last attempt's results
    # and times cleared, no longer waiting for approval; its repository has queued work.
    ENTER_QUEUE = "enter_queue"
    # Activated: activated_at, a deadline (timeout + start grace) in the deadline index, out
    # of the queue index.
    ENTER_ACTIVE = "enter_active"
    # Finished: finished_at, expiry, the outcome (reason, detail, exit code); out of the
    # queue, deadline and approval indexes.
    FINISH = "finish"
    # The slot is kept until the run is known stopped: slot_held, in the held_slots index
    # (so the reconciliation finds it if the record that frees it is lost).
    HOLD_SLOT = "hold_slot"
    # A verdict on the automatic retry is owed: in the held_slots index's retry part until
    # the retry (or the verdict that none is owed) takes the mark off.
    MARK_RETRY = "mark_retry"
    # The retry is made: the failure's mark comes off.
    CLEAR_RETRY_MARK = "clear_retry_mark"
    # A pipeline run runs its steps: out of the queue, no slot and no deadline of its own,
    # in the reconciliation's index of running pipelines (its fan-in may be owed).
    RUN_STEPS = "run_steps"
    # A pipeline run's cancel: it stays in that index until its steps are cancelled too (the
    # cancel's record does it; if the record is lost, the reconciliation finds it there).
    KEEP_IN_RUNS = "keep_in_runs"
    # A refused pipeline keeps its file owed: an operator's retry reads the file again (a
    # fixed file, or GitHub back) rather than run the repository's command instead.
    KEEP_OWED = "keep_owed"
    # Re-run: a finished job (a pipeline run, or its step) runs again: its finish, expiry
    # and outcome cleared, its attempt set.
    REOPEN = "reopen"
    # A re-run step waits for its needs again: the last attempt's run and times cleared
    # (the fan-in queues it, as any blocked step).
    FORGET_RUN = "forget_run"


class Reaction(StrEnum):
    """What the stream does, in this order, once a transition is written."""

    ACTIVATE = "activate"  # queue the job, or run it if a slot is free
    START_RUN = "start_run"  # start its run (after the attempt's backoff)
    STOP_RUN = "stop_run"  # stop its run; what follows waits until it is known stopped
    RELEASE_SLOT = "release_slot"  # free the slot it kept while its run was stopped
    PROMOTE_QUEUED = "promote_queued"  # offer the freed slot to the queue (unless handed on)
    RELEASE_TRIGGER = "release_trigger"  # a new delivery of its commit may build it again
    RETRY_POLICY = "retry_policy"  # the automatic retry, if the policy's verdict gives one
    # A pipeline run's steps are moved on (its first fan-in), or cancelled with it; for a
    # step, the run it is a step of.
    SETTLE_RUN = "settle_run"


class Scope(StrEnum):
    """Which jobs a row moves: jobs (a delivery's job before its pipeline is known, or a
    pipeline's step), pipeline runs (a job whose steps were made), or both."""

    JOB = "job"
    RUN = "run"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the lifecycle: ``trigger`` moves a job from any of ``sources`` to ``dest``."""

    trigger: Trigger
    sources: tuple[JobStatus, ...]
    dest: JobStatus
    slot_delta: int = 0
    effects: tuple[Effect, ...] = ()
    reactions: tuple[Reaction, ...] = ()
    holds_slot: bool = False
    next_attempt: bool = False
    reason: str | None = None
    scope: Scope = Scope.JOB


_QUEUED = (Effect.ENTER_QUEUE,)
_FINISHED = (Effect.FINISH,)

LIFECYCLE: tuple[Row, ...] = (
    # An operator lets a fork's pull request run: it joins the queue like any new job.
    Row(
        Trigger.APPROVE,
        (JobStatus.WAITING,),
        JobStatus.PENDING,
        effects=_QUEUED,
        reactions=(Reaction.ACTIVATE,),
    ),
    Row(
        Trigger.ACTIVATE,
        (JobStatus.PENDING,),
        JobStatus.ACTIVE,
        slot_delta=1,
        effects=(Effect.ENTER_ACTIVE,),
        reactions=(Reaction.START_RUN,),
    ),
    # A run that ended by itself frees its slot in its finishing write.
    Row(
        Trigger.PASS,
        (JobStatus.ACTIVE,),
        JobStatus.PASSED,
        slot_delta=-1,
        effects=_FINISHED,
        reactions=(Reaction.PROMOTE_QUEUED,),
    ),
    Row(
        Trigger.FAIL,
        (JobStatus.ACTIVE,),
        JobStatus.FAILED,
        slot_delta=-1,
        effects=(Effect.FINISH, Effect.MARK_RETRY),
        reactions=(Reaction.PROMOTE_QUEUED, Reaction.RETRY_POLICY),
    ),
    # The reaper's timeout: the run may still go, so the job keeps its slot until the run is
    # known stopped (the next job must not start while the old run still runs).
    Row(
        Trigger.TIME_OUT,
        (JobStatus.ACTIVE,),
        JobStatus.FAILED,
        holds_slot=True,
        reason=TIMED_OUT,
        effects=(Effect.FINISH, Effect.HOLD_SLOT),
        reactions=(
            Reaction.STOP_RUN,
            Reaction.RELEASE_SLOT,
            Reaction.PROMOTE_QUEUED,
            Reaction.RETRY_POLICY,
        ),
    ),
    # A pipeline's step whose needs all ended and whose ``if`` holds: it joins the queue like
    # any new job (exactly once: the write is guarded by its status and version).
    Row(
        Trigger.UNBLOCK,
        (JobStatus.BLOCKED,),
        JobStatus.PENDING,
        effects=_QUEUED,
        reactions=(Reaction.ACTIVATE,),
    ),
    # A step that will not run (a need failed, or its ``if`` said no): it ends as it is.
    Row(Trigger.SKIP, (JobStatus.BLOCKED,), JobStatus.SKIPPED, effects=_FINISHED),
    # A queued job (or one waiting for approval, or a blocked step) holds no slot.
    Row(
        Trigger.CANCEL,
        (JobStatus.WAITING, JobStatus.BLOCKED, JobStatus.PENDING),
        JobStatus.CANCELLED,
        effects=_FINISHED,
        reactions=(Reaction.RELEASE_TRIGGER,),
    ),
    # A cancelled run may still go: as for a timeout, the slot moves once it is stopped.
    Row(
        Trigger.CANCEL,
        (JobStatus.ACTIVE,),
        JobStatus.CANCELLED,
        holds_slot=True,
        effects=(Effect.FINISH, Effect.HOLD_SLOT),
        reactions=(
            Reaction.STOP_RUN,
            Reaction.RELEASE_SLOT,
            Reaction.PROMOTE_QUEUED,
            Reaction.RELEASE_TRIGGER,
        ),
    ),
    # A failure's retry (automatic or an operator's): a new attempt, the failure's mark off.
    Row(
        Trigger.RETRY,
        (JobStatus.FAILED,),
        JobStatus.PENDING,
        next_attempt=True,
        effects=(Effect.CLEAR_RETRY_MARK, Effect.ENTER_QUEUE),
        reactions=(Reaction.ACTIVATE,),
    ),
    # An operator may rebuild a cancelled job too (a new attempt of the same commit).
    Row(
        Trigger.RETRY,
        (JobStatus.CANCELLED,),
        JobStatus.PENDING,
        next_attempt=True,
        effects=_QUEUED,
        reactions=(Reaction.ACTIVATE,),
    ),
    # A pipeline run: a delivery's job whose commit has a pipeline file. Its steps are jobs of
    # their own (they queue, take slots and run); the run only says how they went.
    Row(
        Trigger.EXPAND,
        (JobStatus.PENDING,),
        JobStatus.ACTIVE,
        effects=(Effect.RUN_STEPS,),
        reactions=(Reaction.SETTLE_RUN,),
        scope=Scope.ANY,
    ),
    # A bad pipeline file fails its run before any step is made.
    Row(
        Trigger.REFUSE,
        (JobStatus.PENDING,),
        JobStatus.FAILED,
        reason=PIPELINE_INVALID,
        effects=(Effect.FINISH, Effect.KEEP_OWED),
        scope=Scope.ANY,
    ),
    # Every step ended: passed when each passed or was skipped (no slot, no retry of its own:
    # a step's retries are the step's).
    Row(Trigger.PASS, (JobStatus.ACTIVE,), JobStatus.PASSED, effects=_FINISHED, scope=Scope.RUN),
    Row(
        Trigger.FAIL,
        (JobStatus.ACTIVE,),
        JobStatus.FAILED,
        reason=STEPS_FAILED,
        effects=_FINISHED,
        scope=Scope.RUN,
    ),
    # An operator re-runs steps of an ended pipeline run (its failed ones and what follows
    # them, or one step and what follows it): each such step goes back to blocked first
    # (``reblock``), then the run runs again, a new attempt of it, and its fan-in decides
    # those steps anew. Passed steps that are not re-run keep their result.
    Row(
        Trigger.RERUN,
        (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PASSED),
        JobStatus.ACTIVE,
        next_attempt=True,
        effects=(Effect.REOPEN, Effect.RUN_STEPS),
        reactions=(Reaction.SETTLE_RUN,),
        scope=Scope.RUN,
    ),
    # A step re-run (or downstream of one): it waits for its needs again, a new attempt
    # when it ran (a skipped step never did: its attempt is still unused), and its run's
    # fan-in is asked for (a step re-run in a running run may be runnable at once). Only a
    # pipeline's step is ever blocked (the store's condition: it has a run).
    Row(
        Trigger.REBLOCK,
        (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PASSED),
        JobStatus.BLOCKED,
        next_attempt=True,
        effects=(Effect.REOPEN, Effect.FORGET_RUN, Effect.CLEAR_RETRY_MARK),
        reactions=(Reaction.SETTLE_RUN,),
    ),
    Row(
        Trigger.REBLOCK,
        (JobStatus.SKIPPED,),
        JobStatus.BLOCKED,
        effects=(Effect.REOPEN, Effect.FORGET_RUN),
        reactions=(Reaction.SETTLE_RUN,),
    ),
    # Cancelling a pipeline run cancels its steps (each stops its own run and frees its slot).
    Row(
        Trigger.CANCEL,
        (JobStatus.PENDING, JobStatus.ACTIVE),
        JobStatus.CANCELLED,
        effects=(Effect.FINISH, Effect.KEEP_IN_RUNS),
        reactions=(Reaction.SETTLE_RUN, Reaction.RELEASE_TRIGGER),
        scope=Scope.RUN,
    ),
)


def _machine_table() -> list[dict[str, object]]:
    """Each (trigger, source) pair once: a run's rows that make a change the jobs' rows
    already name (pass, fail, cancel) add nothing; its own triggers (``rerun``) are named."""
    named: set[tuple[Trigger, JobStatus]] = set()
    table: list[dict[str, object]] = []
    for row in LIFECYCLE:
        sources = [s for s in row.sources if (row.trigger, s) not in named]
        if not sources:
            continue
        named.update((row.trigger, s) for s in sources)
        table.append({"trigger": row.trigger, "source": sources, "dest": row.dest})
    return table


TRANSITION_TABLE: list[dict[str, object]] = _machine_table()
"""The lifecycle as `transitions` reads it (trigger, source, dest), derived from the rows."""

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
    """What one legal transition does, as data (its row, for one source).

    ``slot_delta`` is +1 when the job takes one of its repository's slots, -1 when it frees
    one; ``holds_slot`` is true when the job leaves ``active`` but keeps its slot until its run
    is known to be stopped (a cancel, the reaper's timeout); ``next_attempt`` is true when the
    job starts a new attempt; ``reason`` is the fixed failure reason a trigger implies
    (``timed_out``); ``effects`` and ``reactions`` are the row's.
    """

    trigger: Trigger
    source: JobStatus
    dest: JobStatus
    slot_delta: int
    next_attempt: bool
    reason: str | None
    holds_slot: bool = False
    effects: tuple[Effect, ...] = ()
    reactions: tuple[Reaction, ...] = ()
    pipeline_run: bool = False


_Key = tuple[JobStatus, Trigger, bool]  # (source, trigger, whether the job is a pipeline run)


def _compile() -> dict[_Key, TransitionPlan]:
    plans: dict[_Key, TransitionPlan] = {}
    for row in LIFECYCLE:
        event = MACHINE.events[str(row.trigger)]
        runs = {Scope.JOB: (False,), Scope.RUN: (True,), Scope.ANY: (False, True)}[row.scope]
        for source, pipeline_run in ((s, r) for s in row.sources for r in runs):
            # The machine agrees (Enum states are named by member name), and no pair is
            # described twice.
            assert JobStatus[str(event.transitions[source.name][0].dest)] is row.dest
            key = (source, row.trigger, pipeline_run)
            assert key not in plans, key
            plans[key] = TransitionPlan(
                trigger=row.trigger,
                source=source,
                dest=row.dest,
                slot_delta=row.slot_delta,
                next_attempt=row.next_attempt,
                reason=row.reason,
                holds_slot=row.holds_slot,
                effects=row.effects,
                reactions=row.reactions,
                pipeline_run=pipeline_run,
            )
    return plans


_PLANS = _compile()
_BY_CHANGE: dict[tuple[JobStatus, JobStatus, bool], list[TransitionPlan]] = {}
for _plan in _PLANS.values():
    _BY_CHANGE.setdefault((_plan.source, _plan.dest, _plan.pipeline_run), []).append(_plan)


def may(status: JobStatus | str, trigger: Trigger | str, *, pipeline_run: bool = False) -> bool:
    """Whether ``trigger`` is legal from ``status`` (no side effects)."""
    return (JobStatus(status), Trigger(trigger), pipeline_run) in _PLANS


def plan(
    status: JobStatus | str,
    trigger: Trigger | str,
    job_id: str = "?",
    *,
    pipeline_run: bool = False,
) -> TransitionPlan:
    """The plan for ``trigger`` from ``status``; :class:`InvalidTransition` if illegal.

    A pipeline run (a job whose steps were made) moves only by its own rows: it is never
    activated, timed out or retried as a whole (its steps are; it is re-run once the steps
    that run again were reset).
    """
    found = _PLANS.get((JobStatus(status), Trigger(trigger), pipeline_run))
    if found is None:
        raise InvalidTransition(job_id, str(status), str(trigger))
    return found


def triggers_from(status: JobStatus | str, *, pipeline_run: bool = False) -> list[Trigger]:
    """The triggers that are legal from ``status``, in table order."""
    current = JobStatus(status)
    return [
        trigger for (source, trigger, run) in _PLANS if source is current and run == pipeline_run
    ]


def plan_between(
    source: JobStatus, dest: JobStatus, *, slot_held: bool, pipeline_run: bool = False
) -> TransitionPlan | None:
    """The plan a status change read from the stream was made by; None if no row makes it.

    Two rows may make the same change (``active -> failed``: a failure, or the reaper's
    timeout); the one whose ``holds_slot`` matches the item's ``slot_held`` is it. A pipeline
    run's changes are its own rows' (``pipeline_run``: the image has a step count).
    """
    found = _BY_CHANGE.get((source, dest, pipeline_run), [])
    for candidate in found:
        if candidate.holds_slot == slot_held:
            return candidate
    return found[0] if found else None
