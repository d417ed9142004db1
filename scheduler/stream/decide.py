"""Stream record -> transition -> actions, as pure functions (no I/O).

A record of the jobs table is read into a :class:`Transition` (old status, new status, the new
image as a model); :func:`decide` says, as frozen dataclasses, every action that transition
calls for, the automatic retry policy's verdict and delay included. The dispatcher carries the
actions out; tests and dry runs can stop here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

from pynamodb.exceptions import PynamoDBException

from scheduler.config import RetryPolicy, SupersedeMode
from scheduler.db.models import JobModel
from scheduler.db.store import JobState
from scheduler.errors import MalformedStreamRecord
from scheduler.stream.events import StreamRecord
from state_machines import (
    INFRASTRUCTURE_REASONS,
    INFRASTRUCTURE_RETRIES,
    INITIAL_STATUSES,
    JobStatus,
    Reaction,
    plan_between,
)

__all__ = [
    "NO_AUTOMATIC_RETRY",
    "Action",
    "Activate",
    "Lane",
    "PromoteQueued",
    "ReleaseSlot",
    "ReleaseTrigger",
    "RetryFailed",
    "SettleRetryVerdict",
    "SettleRun",
    "StartRun",
    "StopRun",
    "SupersedeOlder",
    "Transition",
    "TransitionObserver",
    "decide",
    "lane_of",
    "lost_attempts_of",
    "read_transition",
]

NO_AUTOMATIC_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class Activate:
    """Try ``pending -> active`` for this job (it stays queued if its repository is full)."""

    job: JobState


@dataclass(frozen=True, slots=True)
class PromoteQueued:
    """Fill the repository's free slots with its oldest queued jobs."""

    repo: str


@dataclass(frozen=True, slots=True)
class StartRun:
    """The job became active: start its run, ``delay_ms`` after it is asked to (a backoff)."""

    job: JobState
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class RetryFailed:
    """The repository's policy retries this failure: ``failed -> pending``, attempt + 1.

    The new attempt's run starts ``delay_ms`` after it is asked to (the policy's backoff).
    """

    job: JobState
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class StopRun:
    """The job left ``active`` while its run may still go (a cancel, the reaper's timeout):
    stop its run (the whole process tree, the build). Its slot moves only once the run is
    known stopped: the actions after it wait for that (or for the reconciliation).

    ``run_id`` is None when no run was claimed yet: nothing can start any more (a claim needs
    an active job), so there is nothing to stop.
    """

    job: JobState
    run_id: str | None


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """The job's run is stopped: free the slot it kept meanwhile (a cancel, a timeout)."""

    job: JobState


@dataclass(frozen=True, slots=True)
class ReleaseTrigger:
    """The job was cancelled: a new delivery of its commit may build it again."""

    job: JobState
    trigger_key: str


@dataclass(frozen=True, slots=True)
class SettleRun:
    """Move a pipeline run on: its fan-in (unblock or skip the steps whose needs ended, end
    the run once every step did), or, for a cancelled run, cancel its steps. Idempotent: each
    move is a guarded write, made once however often it is asked for."""

    run_id: str


@dataclass(frozen=True, slots=True)
class SettleRetryVerdict:
    """A pipeline step's failure owes no automatic retry: say so now (its mark comes off), so
    its dependents see it ended at once rather than after the reconciliation's grace."""

    job: JobState


@dataclass(frozen=True, slots=True)
class Lane:
    """What a newer job supersedes: the pushes of one branch, or the heads of one pull request."""

    repo: str
    event: str
    branch: str | None = None
    pr_number: int | None = None


def lane_of(image: JobModel) -> Lane | None:
    """The lane of a job; None for what is never superseded (tags, a pipeline's steps: their
    run is the one a newer commit supersedes)."""
    if image.run_of is not None:
        return None
    if image.event == "pull_request" and image.pr_number is not None:
        return Lane(image.repo, image.event, pr_number=int(image.pr_number))
    if image.event == "push" and image.branch:
        return Lane(image.repo, image.event, branch=image.branch)
    return None


@dataclass(frozen=True, slots=True)
class SupersedeOlder:
    """A new job: cancel its lane's older jobs that ``mode`` covers, as ``superseded``.

    "queued" covers pending jobs, "all" active ones too (their runs are stopped by their
    cancel's own stream record, before their slots are handed on). A pull request's jobs
    waiting for approval are covered in every mode, "off" included.
    """

    job: JobState
    lane: Lane
    mode: SupersedeMode


Action = (
    Activate
    | PromoteQueued
    | StartRun
    | RetryFailed
    | StopRun
    | ReleaseSlot
    | ReleaseTrigger
    | SupersedeOlder
    | SettleRun
    | SettleRetryVerdict
)


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change read from a stream record; ``source`` is None for a new job."""

    source: JobStatus | None
    dest: JobStatus
    job: JobState
    sequence_number: str
    image: JobModel  # the new image, as a model: everything an action needs

    @property
    def reason(self) -> str | None:
        return self.image.reason

    @property
    def handed_on(self) -> bool:
        """Whether this transition handed the job's slot to a queued job in its own write."""
        history = self.image.history or []
        return bool(history) and history[-1].handed_to is not None


TransitionObserver = Callable[[Transition], None]
"""Told of every transition once its actions succeeded (commit statuses, metrics)."""


def decide(
    source: JobStatus | None,
    dest: JobStatus,
    job: JobState,
    *,
    reason: str | None = None,
    retry: RetryPolicy = NO_AUTOMATIC_RETRY,
    run_id: str | None = None,
    trigger_key: str | None = None,
    lost_attempts: int = 0,
    supersede: SupersedeMode = "off",
    lane: Lane | None = None,
    handed_on: bool = False,
    slot_held: bool = False,
    pipeline_run: bool = False,
    run_of: str | None = None,
) -> list[Action]:
    """Every action the transition ``source -> dest`` of ``job`` calls for (pure, no I/O).

    ``run_id`` and ``trigger_key`` are the new image's: the run to stop and the trigger guard
    to release when a job is cancelled. ``lost_attempts`` counts the job's attempts that failed
    for the infrastructure (this one included): those are retried on their own budget and do
    not use up the repository's retry policy. ``supersede`` is the repository's mode and
    ``lane`` the new image's: only a new job (not a retry) supersedes, before it is activated;
    a new job of a pull request always does (its lane's jobs waiting for approval are stale).
    A new job waiting for approval is neither queued nor run until it is approved.
    ``handed_on``: the finish passed its slot to the head of the queue itself (nothing to
    promote). ``slot_held``: the finish kept its slot while its run may still go (the
    reaper's timeout): the run is stopped first, then the slot freed, as for a cancel.
    ``pipeline_run``: the job is a pipeline run (the image has a step count), whose changes
    are its own rows'. ``run_of``: the job is a step of that run; once it ended for good (no
    retry owed), its run's fan-in follows.
    """
    if source is None:  # a new job: not a transition of the table, its creation
        return _on_creation(dest, job, supersede, lane)
    step = plan_between(source, dest, slot_held=slot_held, pipeline_run=pipeline_run)
    if step is None:
        return []  # no row of the lifecycle makes this change
    # What follows a transition is its row's reactions (state_machines.LIFECYCLE), in order;
    # each becomes its action (or none, when the record says it is not owed).
    actions: list[Action] = []
    for reaction in step.reactions:
        match reaction:
            case Reaction.ACTIVATE:  # a retry, or an approval: queue or run it
                actions.append(Activate(job))
            case Reaction.START_RUN:
                actions.append(StartRun(job, delay_ms=job.start_delay_ms))
            case Reaction.STOP_RUN:
                # The slot was kept: stop the run first, then free it, then offer it to the
                # queue, so the repository's limit holds while the run winds down.
                actions.append(StopRun(job, run_id))
            case Reaction.RELEASE_SLOT:
                actions.append(ReleaseSlot(job))
            case Reaction.PROMOTE_QUEUED:
                # Not when the finishing transaction handed its slot on itself, unless the
                # job freed its concurrency group too: the group's queued jobs are owed it.
                owed = not handed_on or job.concurrency_group is not None
                actions += [PromoteQueued(job.repo)] if owed else []
            case Reaction.RELEASE_TRIGGER:
                actions += [ReleaseTrigger(job, trigger_key)] if trigger_key else []
            case Reaction.RETRY_POLICY:
                actions += _retry_verdict(job, reason, retry, lost_attempts)
            case Reaction.SETTLE_RUN:  # the run itself, or the run a re-run step is of
                actions.append(SettleRun(run_of if run_of is not None else job.job_id))
            case _:
                assert_never(reaction)
    return actions + _step_ended(step.reactions, actions, job, run_of, dest)


def _step_ended(
    reactions: tuple[Reaction, ...],
    actions: list[Action],
    job: JobState,
    run_of: str | None,
    dest: JobStatus,
) -> list[Action]:
    """What a step's end owes its run: nothing while a retry is made; else the verdict that
    none is owed (when one was being weighed), then the run's fan-in."""
    if run_of is None or not dest.is_terminal:
        return []
    if any(isinstance(action, RetryFailed) for action in actions):
        return []  # it runs again: not ended for its dependents
    verdict: list[Action] = [SettleRetryVerdict(job)] if Reaction.RETRY_POLICY in reactions else []
    return [*verdict, SettleRun(run_of)]


def _on_creation(
    dest: JobStatus, job: JobState, supersede: SupersedeMode, lane: Lane | None
) -> list[Action]:
    if dest not in INITIAL_STATUSES:
        return []  # no job is created so
    older: list[Action] = []
    if lane is not None and (supersede != "off" or lane.pr_number is not None):
        older.append(SupersedeOlder(job, lane, supersede))
    # A new job is queued (or run); one waiting for approval stays where it is.
    return [*older, Activate(job)] if dest is JobStatus.PENDING else older


def _retry_verdict(
    job: JobState, reason: str | None, retry: RetryPolicy, lost_attempts: int
) -> list[Action]:
    """The automatic retry a failure gets, if any: a failure of the infrastructure on its own
    budget, any other as the repository's policy says (with its backoff)."""
    if reason in INFRASTRUCTURE_REASONS:
        return [RetryFailed(job)] if lost_attempts <= INFRASTRUCTURE_RETRIES else []
    if retry.allows(job.attempt - lost_attempts, reason):
        own_next = job.attempt - lost_attempts + 1
        return [RetryFailed(job, delay_ms=round(retry.delay_seconds(own_next) * 1000))]
    return []


def lost_attempts_of(image: JobModel) -> int:
    """How many of a job's attempts failed for the infrastructure (its history says)."""
    return sum(
        1
        for entry in image.history or []
        if entry.dest == JobStatus.FAILED.value and entry.reason in INFRASTRUCTURE_REASONS
    )


def read_transition(record: StreamRecord) -> Transition | None:
    """The status transition a record carries, or None if it carries none.

    Removals (TTL expiry), items that are not jobs (no ``status``) and changes that keep the
    status are ignored before any model is built, so they cost next to nothing.
    """
    data = record["dynamodb"]
    sequence_number = data["SequenceNumber"]
    new_image = data.get("NewImage")
    old_image = data.get("OldImage")
    new_status = _status_of(new_image)
    old_status = _status_of(old_image)
    if new_image is None or new_status is None or new_status == old_status:
        return None
    try:
        source = JobStatus(old_status) if old_status is not None else None
        dest = JobStatus(new_status)
        # Images are DynamoDB JSON: the low-level attribute map that from_raw_data reads.
        image = JobModel.from_raw_data(new_image)
        job = JobState.from_model(image)
    except (ValueError, TypeError, KeyError, AttributeError, PynamoDBException) as exc:
        raise MalformedStreamRecord(sequence_number, f"not a readable job: {exc}") from exc
    return Transition(source, dest, job, sequence_number, image)


def _status_of(image: Mapping[str, Any] | None) -> str | None:
    if not image:
        return None
    value = image.get("status")
    return value.get("S") if isinstance(value, Mapping) else None
