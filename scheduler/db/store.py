"""Guarded writes: the only module that writes the ``jobs`` and ``repos`` tables.

Every change of a job's status is *one* ``TransactWriteItems`` request of two items:

1. the job, conditioned on the status and version the caller read (so a stale reader, a
   duplicate stream record or a racing process loses cleanly), and
2. the job's repository counters, moved by the same amounts (so counters cannot drift from
   the items they count). Activation is additionally conditioned on a free slot.

A run's finish may carry a third item: the head of the repository's queue, activated in the
same write (:class:`HandOff`), so that the slot passes from one job to the next.

One convention for every guarded write here: it returns what it wrote, or raises a subclass
of :class:`~state_machines.errors.GuardRefused` saying why its condition was false, with what
the caller needs on the error; nothing is written then. The family:

- :class:`TransitionConflict` — the job moved since it was read (a lost race, a duplicate or
  stale stream record, a late run report);
- :class:`RepositoryFull` — activation found no free slot (the job stays queued);
- :class:`GroupBusy` — activation found the job's concurrency group held (it stays queued);
- :class:`JobExists` — the delivery's job is already there;
- :class:`TriggerSeen` — another job holds the trigger (``job_id`` names it);
- :class:`RunAlreadyClaimed` — another starter claimed the attempt's run;
- :class:`HandOffRefused` — the queued job a finish would hand its slot to moved.

:class:`StoreUnavailable` (and :class:`StoreContended`) are different: nothing is known to have
happened, and the caller must try again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, assert_never

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.connection import Connection
from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from scheduler import metrics
from scheduler.db.models import (
    ACTIVE_SHARD,
    HELD_SHARD,
    QUEUED_SHARD,
    RETRY_SHARD,
    RUN_SHARD,
    HistoryEntry,
    JobModel,
    RepoModel,
    count_attribute,
    group_key,
    holds_no_slot,
)
from scheduler.db.reads import JobReads, cause, job_table
from scheduler.errors import (
    GroupBusy,
    HandOffRefused,
    JobExists,
    RepositoryFull,
    RunAlreadyClaimed,
    StoreUnavailable,
    TriggerSeen,
)
from scheduler.settings import Settings
from state_machines import (
    INITIAL_STATUSES,
    Effect,
    JobStatus,
    TransitionConflict,
    TransitionPlan,
    Trigger,
    plan,
)

log = logging.getLogger(__name__)

Clock = Callable[[], int]
"""Returns the current time as integer epoch milliseconds."""

DAY_MS = 86_400_000
_CONDITION_FAILED = "ConditionalCheckFailed"
_TRANSACTION_CONFLICT = "TransactionConflict"


def system_clock() -> int:
    return time.time_ns() // 1_000_000


class QueueAhead(RepositoryFull):
    """An activation that must not overtake the queue found older queued jobs of its
    repository (its pending count was above 1) while a slot was free: the caller promotes the
    queue, oldest first, instead (this job among them, in its turn)."""


class StoreContended(StoreUnavailable):
    """DynamoDB kept cancelling the transaction for concurrent transactions on its items.

    Unlike :class:`TransitionConflict` nothing is known to have happened: the caller must retry
    (the stream processor fails the record so that it is delivered again).
    """


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a webhook delivery makes of a job; everything later steps need, nothing more."""

    job_id: str
    repo: str
    event: str
    sha: str
    timeout_seconds: int
    ref: str | None = None
    branch: str | None = None
    pr_number: int | None = None
    sender: str | None = None
    delivery_id: str | None = None
    priority: int = 0
    trace_id: str | None = None
    clone_url: str | None = None
    # A fork's pull request; ``status`` is waiting when it must be approved before it queues.
    fork: bool = False
    status: JobStatus = JobStatus.PENDING
    # A pipeline's step (``status`` blocked until its needs end): its run's id, its key, and
    # its definition as JSON.
    run_of: str | None = None
    step_key: str | None = None
    step: str | None = None
    # The commit's pipeline file is to be read before the job may be activated.
    pipeline_owed: bool = False
    # A step's ``concurrency_group``: one job of the repository's group holds a slot at a time.
    concurrency_group: str | None = None


@dataclass(frozen=True, slots=True)
class JobState:
    """What a transition needs to know about a job, as the caller read it.

    The stream image, the caller's own last write or a consistent read all give one; a
    transition's condition is exactly ``status`` and ``version``.
    """

    job_id: str
    repo: str
    status: JobStatus
    version: int
    attempt: int
    timeout_seconds: int
    received_at: int
    priority: int = 0
    start_delay_ms: int = 0
    # A pipeline run (its steps were made): it moves by the lifecycle's rows for runs.
    pipeline_run: bool = False
    # A step of a concurrency group: its activation takes the group too.
    concurrency_group: str | None = None

    @classmethod
    def from_model(cls, job: JobModel) -> JobState:
        return cls(
            job_id=job.job_id,
            repo=job.repo,
            status=JobStatus(job.status),
            version=int(job.version),
            attempt=int(job.attempt),
            timeout_seconds=int(job.timeout_seconds),
            received_at=int(job.received_at),
            priority=int(job.priority or 0),
            start_delay_ms=int(job.start_delay_ms or 0),
            pipeline_run=job.step_count is not None,
            concurrency_group=job.concurrency_group,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """Details a finishing transition records on the job."""

    reason: str | None = None
    detail: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class RunClaimed:
    """The claim of an attempt's run, written by its activation (see :meth:`JobStore.activate`).

    No ``started_at`` and no new deadline: the run may still wait for a runner, so the
    activation's deadline (with its grace for the start) stands, and the run's report records
    when it really started.
    """

    run_id: str
    log_location: str | None = None

    def actions(self) -> list[Action]:
        return [
            JobModel.run_id.set(self.run_id),
            *([JobModel.log_location.set(self.log_location)] if self.log_location else []),
        ]


@dataclass(frozen=True, slots=True)
class HandOff:
    """A finishing run's slot, handed in the finish's own write to the head of its
    repository's queue (see :meth:`JobStore.finish_run`): that job is activated, and its run
    claimed, with no write or promotion of its own."""

    job: JobState  # pending, as read from the queue
    claim: RunClaimed
    slot_limit: int


TRIGGER_PREFIX = "trigger#"
"""Key prefix of trigger guards in the repos table (which has no stream)."""

WRITE_BATCH = 99
"""Jobs one transaction of :meth:`JobStore.create_all` or :meth:`JobStore.transition_all`
writes: DynamoDB's transactions hold at most 100 items, and one is their repository's
counters."""


@dataclass(frozen=True, slots=True)
class TriggerGuard:
    """Claim ``key`` (a hash of repository, event, ref or PR, sha) for ``window_ms``."""

    key: str
    window_ms: int = 30 * 86_400_000


def queue_key(priority: int, received_at: int, job_id: str) -> str:
    """Sort key of the sparse `queued` index: lower priority first, then oldest first."""
    return f"{max(0, min(priority, 9999)):04d}#{received_at:013d}#{job_id}"


class JobStore:
    def __init__(
        self,
        connection: Connection,
        *,
        clock: Clock = system_clock,
        retention_days: int = 30,
        start_grace_seconds: int = 60,
        conflict_retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._connection = connection
        self.reads = JobReads(connection)
        self._clock = clock
        self._retention_ms = retention_days * DAY_MS
        self._start_grace_ms = start_grace_seconds * 1000
        self._conflict_retries = conflict_retries
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> JobStore:
        connection = Connection(
            region=settings.region,
            host=settings.dynamodb_endpoint,
            max_pool_connections=64,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
        )
        kwargs.setdefault("start_grace_seconds", settings.start_grace_seconds)
        return cls(connection, retention_days=settings.retention_days, **kwargs)

    @property
    def connection(self) -> Connection:
        return self._connection

    # -- reads ------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobModel:
        """One job, read consistently (callers that read before a transition need the latest)."""
        return self.reads.get(job_id)

    def state(self, job_id: str) -> JobState:
        return JobState.from_model(self.get(job_id))

    # -- writes -----------------------------------------------------------------------------

    def create(
        self,
        new: NewJob,
        *,
        actor: str = "webhook",
        now: int | None = None,
        guard: TriggerGuard | None = None,
    ) -> JobState:
        """Write a new job (pending, waiting for approval, or a blocked step) and count it,
        all or nothing.

        Raises :class:`JobExists` if the job (its delivery) is already there. With ``guard``,
        the same transaction also claims the trigger (repository, event, ref or PR, sha): if
        another job holds it, nothing is written and :class:`TriggerSeen` names that job.
        """
        if new.status not in INITIAL_STATUSES:
            raise ValueError(f"a job cannot be created {new.status}")
        now = self._clock() if now is None else now
        job = self._new_item(new, now, actor)
        guard_item = TRIGGER_PREFIX + guard.key if guard else None
        queued = new.status is JobStatus.PENDING
        if guard is not None:
            job.trigger_key = guard.key

        def build(tx: TransactWrite) -> None:
            # The job id is derived from the delivery id: a redelivery finds the item there.
            tx.save(job, condition=JobModel.job_id.does_not_exist())
            if guard is not None and guard_item is not None:
                # Only if no job claimed this trigger within the window; an older guard is
                # taken over (its job has expired by then).
                tx.update(
                    RepoModel(guard_item),
                    actions=[
                        RepoModel.last_job_id.set(new.job_id),
                        RepoModel.last_received_at.set(now),
                    ],
                    condition=RepoModel.repo.does_not_exist()
                    | (RepoModel.last_received_at < now - guard.window_ms),
                )
            # The repository's counters, moved with the job and never apart from it; a queued
            # job marks its repository as one with queued work (the sweeper's index), in the
            # same write, so no lost stream record can hide the job from the sweeper.
            tx.update(
                RepoModel(new.repo),
                actions=[
                    getattr(RepoModel, count_attribute(new.status)).add(1),
                    RepoModel.last_job_id.set(new.job_id),
                    RepoModel.last_received_at.set(now),
                    *([RepoModel.queue_shard.set(QUEUED_SHARD)] if queued else []),
                ],
            )

        # PynamoDB sends puts before updates, in the order added: job, [guard], counters.
        reasons = self._commit(build, job_id=new.job_id, what="create")
        if reasons is not None:
            if reasons[0] == _CONDITION_FAILED:
                raise JobExists(new.job_id)
            if guard_item is not None and reasons[1] == _CONDITION_FAILED:
                raise TriggerSeen(self._guard_owner(guard_item, new.job_id))
            raise StoreUnavailable(f"create of job {new.job_id} cancelled: {reasons}")
        log.info("job created", extra={"job_id": new.job_id, "repo": new.repo})
        return JobState(
            job_id=new.job_id,
            repo=new.repo,
            status=new.status,
            version=0,
            attempt=1,
            timeout_seconds=new.timeout_seconds,
            received_at=now,
            priority=new.priority,
            concurrency_group=new.concurrency_group,
        )

    def create_all(self, news: Sequence[NewJob], *, actor: str) -> list[str]:
        """Write the jobs of ``news`` that are not there yet, counted with them; the ids made.

        For many jobs of one repository and status at once (a pipeline run's steps): up to
        :data:`WRITE_BATCH` jobs go in one transaction with their repository's counters (a
        run of 50 steps costs one write, not 50). Each job is written only if it is not there
        yet: when some are (a replayed fan-out, or one cut short), the transaction writes
        nothing and names them, and it is sent again without them.
        """
        kinds = {(new.repo, new.status) for new in news}
        if len(kinds) > 1:
            raise ValueError(f"jobs created together share a repository and status: {kinds}")
        made: list[str] = []
        for first in range(0, len(news), WRITE_BATCH):
            batch = news[first : first + WRITE_BATCH]
            made += _without_refused(batch, lambda part: self._create_batch(part, actor))
        return made

    def _create_batch(self, batch: Sequence[NewJob], actor: str) -> set[str]:
        """One transaction writing every job of ``batch`` and counting them. Returns the ids
        of those that are there already (then nothing was written), else the empty set."""
        status = batch[0].status
        if status not in INITIAL_STATUSES:
            raise ValueError(f"a job cannot be created {status}")
        now = self._clock()
        queued = status is JobStatus.PENDING

        def build(tx: TransactWrite) -> None:
            for new in batch:
                tx.save(self._new_item(new, now, actor), condition=JobModel.job_id.does_not_exist())
            # The counters move with the jobs, by as many as the transaction makes. The
            # repository's last job stays the delivery's (a run, not its last step).
            tx.update(
                RepoModel(batch[0].repo),
                actions=[
                    getattr(RepoModel, count_attribute(status)).add(len(batch)),
                    *([RepoModel.queue_shard.set(QUEUED_SHARD)] if queued else []),
                ],
            )

        what = f"create of {len(batch)} jobs"
        reasons = self._commit(build, job_id=batch[0].job_id, what=what)
        if reasons is None:
            log.info("jobs created", extra={"job_id": batch[0].job_id, "count": len(batch)})
            return set()
        # PynamoDB sends the puts first, in the order added: reason i is job i's.
        return _named_refusals([new.job_id for new in batch], reasons, what)

    @staticmethod
    def _new_item(new: NewJob, now: int, actor: str) -> JobModel:
        # A pending job joins the queue's sparse indexes; a waiting one only the index of
        # waiting jobs (it is not queued: nothing promotes it until it is approved); a blocked
        # step neither (its run's fan-in unblocks it).
        queued = new.status is JobStatus.PENDING
        return JobModel(
            new.job_id,
            repo=new.repo,
            event=new.event,
            sha=new.sha,
            ref=new.ref,
            branch=new.branch,
            pr_number=new.pr_number,
            clone_url=new.clone_url,
            sender=new.sender,
            delivery_id=new.delivery_id,
            fork=new.fork,
            status=new.status.value,
            attempt=1,
            version=0,
            priority=new.priority,
            timeout_seconds=new.timeout_seconds,
            received_at=now,
            updated_at=now,
            history=[
                _entry(source=None, dest=new.status, at=now, actor=actor, attempt=1, reason=None)
            ],
            trace_id=new.trace_id,
            queue_repo=new.repo if queued else None,
            queue_shard=QUEUED_SHARD if queued else None,
            queue_key=queue_key(new.priority, now, new.job_id) if queued else None,
            waiting_repo=new.repo if new.status is JobStatus.WAITING else None,
            run_of=new.run_of,
            step_key=new.step_key,
            step=new.step,
            pipeline_owed=True if new.pipeline_owed else None,
            concurrency_group=new.concurrency_group,
        )

    def _guard_owner(self, guard_item: str, job_id: str) -> str:
        """The job id a trigger guard names (it exists: its condition just failed)."""
        what = f"trigger guard of job {job_id}"
        owner = self.reads.repos_attribute(guard_item, "last_job_id", what=what).get("S")
        if not owner:
            raise StoreUnavailable(f"{what} vanished; retry")
        return str(owner)

    def activate(
        self,
        job: JobState,
        *,
        slot_limit: int,
        actor: str = "scheduler",
        claim: RunClaimed | None = None,
        alone: bool = False,
    ) -> JobState:
        """``pending -> active`` if the repository has a free slot, else :class:`RepositoryFull`;
        for a job of a concurrency group, also only if no other job of its group holds a slot
        (else :class:`GroupBusy`), taking the group in the same write.

        With ``claim`` the activation is also the claim of the attempt's run (what
        :meth:`claim_run` writes, in the same write), naming the runner that starts it when
        the activation's record reaches it: one write and one stream record fewer per job.
        With ``alone`` the job takes a slot only if it is its repository's one pending job
        (the counters say so in the same write): with others queued, :class:`QueueAhead`, and
        the caller promotes the queue in its order, so a new job never overtakes older ones
        whose promotion is owed elsewhere (another invocation, a lost record).
        """
        return self.transition(
            job, Trigger.ACTIVATE, actor=actor, slot_limit=slot_limit, claim=claim, alone=alone
        )

    def transition(
        self,
        job: JobState,
        trigger: Trigger | str,
        *,
        actor: str,
        outcome: Outcome | None = None,
        slot_limit: int | None = None,
        start_delay_ms: int = 0,
        claim: RunClaimed | None = None,
        alone: bool = False,
    ) -> JobState:
        """Carry out ``trigger`` on ``job`` as one conditional transaction.

        Raises :class:`InvalidTransition` (before any I/O) if the trigger is illegal from the
        status read, :class:`TransitionConflict` if the job moved since it was read,
        :class:`RepositoryFull` if an activation found no free slot. ``start_delay_ms`` (a
        retry's backoff) is recorded as the earliest start of the new attempt's run.
        """
        # Condition: the job is still exactly what the caller read. A duplicate stream record, a
        # stale image or a racing process fails here and writes nothing.
        job_condition = (JobModel.status == job.status.value) & (JobModel.version == job.version)
        return self._transition(
            job,
            trigger,
            job_condition,
            actor=actor,
            outcome=outcome,
            slot_limit=slot_limit,
            start_delay_ms=start_delay_ms,
            claim=claim,
            alone=alone,
        )

    def _transition(
        self,
        job: JobState,
        trigger: Trigger | str,
        job_condition: Condition,
        *,
        actor: str,
        outcome: Outcome | None = None,
        slot_limit: int | None = None,
        start_delay_ms: int = 0,
        claim: RunClaimed | None = None,
        started_at: int | None = None,
        hand_off: HandOff | None = None,
        alone: bool = False,
    ) -> JobState:
        step = plan(job.status, trigger, job.job_id, pipeline_run=job.pipeline_run)
        if step.slot_delta > 0 and slot_limit is None:
            raise ValueError("activation needs the repository's slot limit")
        if claim is not None and Effect.ENTER_ACTIVE not in step.effects:
            raise ValueError("only an activation can claim the run")
        now = self._clock()
        outcome = outcome or Outcome(reason=step.reason)
        if step.reason and not outcome.reason:
            outcome = replace(outcome, reason=step.reason)
        attempt = job.attempt + 1 if step.next_attempt else job.attempt
        job_actions = self._job_actions(
            job=job,
            step=step,
            now=now,
            actor=actor,
            attempt=attempt,
            outcome=outcome,
            start_delay_ms=start_delay_ms,
            handed_to=hand_off.job.job_id if hand_off is not None else None,
            claimed=claim is not None,
        )
        if claim is not None:
            job_actions += claim.actions()
        if started_at is not None:
            job_actions.append(JobModel.started_at.set(started_at))
        steps = [step]
        group = self._group_take(job) if step.slot_delta > 0 else None
        if hand_off is not None:
            next_step, next_actions = self._hand_off_plan(hand_off, step, now=now, actor=actor)
            steps.append(next_step)
            slot_limit = hand_off.slot_limit
        repo_actions, repo_condition = self._repo_changes(steps, slot_limit)
        if alone and repo_condition is not None:
            # Only the repository's one pending job (this one) may take the slot directly.
            repo_condition &= RepoModel.n_pending.does_not_exist() | (RepoModel.n_pending <= 1)
        job_condition = _guarded(step, job_condition)

        def build(tx: TransactWrite) -> None:
            tx.update(JobModel(job.job_id), actions=job_actions, condition=job_condition)
            # Same transaction: the repository's counters move with the job, never apart. A
            # refused activation returns the counters: full, or a queue ahead of it?
            tx.update(
                RepoModel(job.repo),
                actions=repo_actions,
                condition=repo_condition,
                return_values="ALL_OLD" if alone else None,
            )
            if hand_off is not None:
                tx.update(
                    JobModel(hand_off.job.job_id),
                    actions=next_actions,
                    condition=(JobModel.status == hand_off.job.status.value)
                    & (JobModel.version == hand_off.job.version)
                    & (JobModel.repo == job.repo),
                )
            if group is not None:
                group.add_to(tx)

        items: list[dict[str, Any] | None] = []
        reasons = self._commit(build, job_id=job.job_id, what=str(step.trigger), items=items)
        if reasons is not None:
            counters = items if alone else None
            raise _refusal(
                reasons, job, step, slot_limit, hand_off=hand_off, group=group, counters=counters
            )
        if hand_off is not None:
            log.info(
                "slot handed on",
                extra={"job_id": hand_off.job.job_id, "repo": job.repo, "from_job": job.job_id},
            )
        log.info(
            "job transition",
            extra={
                "job_id": job.job_id,
                "repo": job.repo,
                "transition": f"{step.source}->{step.dest}",
                "actor": actor,
            },
        )
        if step.dest is JobStatus.PENDING:
            job = replace(job, start_delay_ms=start_delay_ms)
        return replace(job, status=step.dest, version=job.version + 1, attempt=attempt)

    def _hand_off_plan(
        self, hand_off: HandOff, step: TransitionPlan, *, now: int, actor: str
    ) -> tuple[TransitionPlan, list[Action]]:
        """The activation of the job a finish hands its slot to, as a plan and its actions."""
        if step.slot_delta >= 0:
            raise ValueError("only a transition that frees a slot can hand it on")
        if hand_off.job.concurrency_group is not None:
            raise ValueError("a job of a concurrency group is never handed a slot")
        next_step = plan(hand_off.job.status, Trigger.ACTIVATE, hand_off.job.job_id)
        next_actions = self._job_actions(
            job=hand_off.job,
            step=next_step,
            now=now,
            actor=actor,
            attempt=hand_off.job.attempt,
            outcome=Outcome(reason=next_step.reason),
            claimed=True,
        )
        return next_step, next_actions + hand_off.claim.actions()

    def _group_take(self, job: JobState) -> _GroupTake | None:
        """What an activation of ``job`` writes to take its concurrency group (None: it has
        none): the holder is read first, consistently, as the take is conditioned on it."""
        if job.concurrency_group is None:
            return None
        key = group_key(job.repo, job.concurrency_group)
        holder = self.reads.repos_attribute(key, "holder", what=f"concurrency group {key}")
        return _GroupTake(key, job.job_id, holder.get("S"))

    def transition_all(
        self, jobs: Sequence[JobState], trigger: Trigger, *, actor: str
    ) -> list[str]:
        """Carry out ``trigger`` on each of ``jobs`` (one repository's, at most
        :data:`WRITE_BATCH`, each as read) in one transaction with their repository's
        counters; the ids moved.

        For a fan-in's unblocks and skips: 48 steps unblocked at once are one write, not 48
        one after the other. Each job moves only if it is still what was read, as with
        :meth:`transition`: one that moved since (another fan-in, a cancel) makes the whole
        transaction write nothing and is named by it, and the transaction is sent again
        without it. Only for triggers that neither take nor free a slot nor start an attempt.
        """
        if len(jobs) > WRITE_BATCH:
            raise ValueError(f"at most {WRITE_BATCH} jobs a transaction, not {len(jobs)}")
        if len({job.repo for job in jobs}) > 1:
            raise ValueError("jobs moved together share a repository")
        return _without_refused(jobs, lambda part: self._transition_batch(part, trigger, actor))

    def _transition_batch(
        self, batch: Sequence[JobState], trigger: Trigger, actor: str
    ) -> set[str]:
        """One transaction moving every job of ``batch``. Returns the ids of those that moved
        since they were read (then nothing was written), else the empty set."""
        plans = [
            plan(job.status, trigger, job.job_id, pipeline_run=job.pipeline_run) for job in batch
        ]
        if any(step.slot_delta or step.next_attempt for step in plans):
            raise ValueError(f"{trigger} takes or frees a slot, or starts an attempt")
        now = self._clock()
        repo_actions, _ = self._repo_changes(plans, None)

        def build(tx: TransactWrite) -> None:
            for job, step in zip(batch, plans, strict=True):
                actions = self._job_actions(
                    job=job,
                    step=step,
                    now=now,
                    actor=actor,
                    attempt=job.attempt,
                    outcome=Outcome(reason=step.reason),
                )
                # Each job only if it is still exactly what the caller read (and what its
                # row asks besides, as for one transition).
                condition = _guarded(
                    step, (JobModel.status == job.status.value) & (JobModel.version == job.version)
                )
                tx.update(JobModel(job.job_id), actions=actions, condition=condition)
            # The counters move with the jobs, all of them at once.
            tx.update(RepoModel(batch[0].repo), actions=repo_actions)

        what = f"{trigger} of {len(batch)} jobs"
        reasons = self._commit(build, job_id=batch[0].job_id, what=what)
        if reasons is None:
            for job, step in zip(batch, plans, strict=True):
                log.info(
                    "job transition",
                    extra={
                        "job_id": job.job_id,
                        "repo": job.repo,
                        "transition": f"{step.source}->{step.dest}",
                        "actor": actor,
                    },
                )
            return set()
        return _named_refusals([job.job_id for job in batch], reasons, what)

    def claim_run(self, job: JobState, run_id: str, log_location: str | None = None) -> None:
        """Record that ``run_id`` runs ``job``'s current attempt, or :class:`RunAlreadyClaimed`.

        This is the cross-process idempotency key ``job_id#attempt``: whoever claims first
        starts the run, every other starter (a duplicate stream record, a second runner)
        loses here and starts nothing. It is not a transition (the status stays), but it moves
        the version: a writer that read the job before the claim (the reaper, about to time
        out a run it believes never started) must lose rather than fail a running job.
        """
        now = self._clock()
        self._update_job(
            job.job_id,
            actions=[
                JobModel.version.add(1),
                JobModel.run_id.set(run_id),
                JobModel.started_at.set(now),
                # The timeout counts from the run's start, not from the activation.
                JobModel.deadline_at.set(now + job.timeout_seconds * 1000),
                *([JobModel.log_location.set(log_location)] if log_location else []),
            ],
            # Only the active attempt we were asked to start, and only once.
            condition=(JobModel.status == JobStatus.ACTIVE.value)
            & (JobModel.attempt == job.attempt)
            & JobModel.run_id.does_not_exist(),
            refused=RunAlreadyClaimed(job.job_id, job.attempt),
            what=f"claim of run {run_id}",
        )
        log.info("run claimed", extra={"job_id": job.job_id, "run_id": run_id})

    def record_step_count(self, run_id: str, count: int) -> None:
        """Record how many steps a pipeline run has, before any is made (so a fan-out cut
        short is finished by its replay, and the fan-in reads them all). The same count again
        is a no-op; another is :class:`TransitionConflict` (a run has one pipeline), as is a run
        no longer pending (cancelled, or expanded by another process: it makes no steps)."""
        self._update_job(
            run_id,
            actions=[JobModel.step_count.set(count)],
            condition=(JobModel.status == JobStatus.PENDING.value)
            & (JobModel.step_count.does_not_exist() | (JobModel.step_count == count)),
            refused=TransitionConflict(run_id, f"a pipeline of {count} steps"),
            what=f"step count of run {run_id}",
        )

    def touch_run(self, run: JobState, *, actor: str) -> JobState:
        """Move a running pipeline run's version, nothing else: after steps of it were re-run.

        A fan-in reads its run, then its steps, and ends the run conditioned on the version
        it read: one that read the steps before they were reset (and so saw them ended) must
        not end the run after. Conditioned on the run being active at the version read;
        :class:`TransitionConflict` if it moved (it ended: the caller re-runs it instead).
        """
        now = self._clock()
        self._update_job(
            run.job_id,
            actions=[JobModel.version.add(1), JobModel.updated_at.set(now)],
            condition=(JobModel.status == JobStatus.ACTIVE.value)
            & (JobModel.version == run.version),
            refused=TransitionConflict(run.job_id, "rerun", f"by {actor}"),
            what=f"re-run of run {run.job_id}",
        )
        return replace(run, version=run.version + 1)

    def record_run_id(self, job_id: str, attempt: int, claimed: str, run_id: str) -> None:
        """Replace the claimed run id by the executor's own (only for that claim's attempt).

        Raises :class:`RunAlreadyClaimed` if the claim is no longer there (the attempt moved on).
        """
        self._update_job(
            job_id,
            actions=[JobModel.run_id.set(run_id)],
            condition=(JobModel.attempt == attempt) & (JobModel.run_id == claimed),
            refused=RunAlreadyClaimed(job_id, attempt),
            what=f"record of run {run_id}",
        )

    def report(
        self,
        job_id: str,
        attempt: int,
        trigger: Trigger | str,
        *,
        actor: str,
        outcome: Outcome | None = None,
    ) -> JobState:
        """A run's outcome for ``attempt``: finish the job.

        A late or duplicate report (another attempt runs now, the job was cancelled, timed out
        or already finished) raises :class:`TransitionConflict` and changes nothing.
        """
        job = self.state(job_id)
        if job.status is not JobStatus.ACTIVE or job.attempt != attempt:
            log.info("moot run report", extra={"job_id": job_id, "attempt": attempt})
            raise TransitionConflict(job_id, str(trigger), f"attempt {attempt} is not running")
        return self.transition(job, trigger, actor=actor, outcome=outcome)

    def finish_run(
        self,
        job_id: str,
        repo: str,
        attempt: int,
        trigger: Trigger | str,
        *,
        actor: str,
        outcome: Outcome | None = None,
        started_at: int | None = None,
        hand_off: HandOff | None = None,
    ) -> JobStatus:
        """:meth:`report` without its read, for a runner that knows the job's repository.

        The finish is conditioned on ``attempt`` still being the job's active one (and on the
        repository, whose counters it moves) rather than on a version read first: a late or
        duplicate report, or one that lost to a cancel or a timeout, raises
        :class:`TransitionConflict` and changes nothing. Returns the job's new status.
        ``started_at`` is when a runner took the run, for a run whose claim came with its
        activation (nothing was written when it left the runner's queue).

        With ``hand_off`` the same write activates the queued job it names, claiming its run:
        the slot passes from one job to the next, so the repository's counters show it busy
        throughout, and the finish's record owes no promotion (its history entry names the
        job). :class:`HandOffRefused` if that job moved or the limit went down: nothing is
        written, and the caller finishes without it.
        """
        running = JobState(
            job_id=job_id,
            repo=repo,
            status=JobStatus.ACTIVE,
            version=0,  # not read, not part of the condition
            attempt=attempt,
            timeout_seconds=0,
            received_at=0,
        )
        condition = (
            (JobModel.status == JobStatus.ACTIVE.value)
            & (JobModel.attempt == attempt)
            & (JobModel.repo == repo)
        )
        done = self._transition(
            running,
            trigger,
            condition,
            actor=actor,
            outcome=outcome,
            started_at=started_at,
            hand_off=hand_off,
        )
        return done.status

    def defer_deadline(self, job: JobState, until: int) -> JobState:
        """Move an unstarted active job's deadline to ``until`` (its run waits for a runner).

        Conditioned on the status and version read: a run claimed meanwhile (``claim_run``
        moves the version) keeps the deadline its claim set. A run claimed by its activation
        is deferred while it waits. Raises :class:`TransitionConflict` if the job moved.
        """
        self._update_job(
            job.job_id,
            actions=[JobModel.deadline_at.set(until), JobModel.version.add(1)],
            condition=(JobModel.status == JobStatus.ACTIVE.value)
            & (JobModel.version == job.version),
            refused=TransitionConflict(job.job_id, "defer deadline"),
            what=f"deadline of job {job.job_id}",
        )
        return replace(job, version=job.version + 1)

    def release_slot(self, job: JobState) -> None:
        """Free the slot a cancelled (or timed-out) job kept while its run was being stopped.

        One transaction: the job's ``slot_held`` mark goes (condition: it is there, the job is
        still in the status read) and the repository's slot counter moves with it. A failure
        keeps its place in the index, now as one whose retry verdict is owed (its record's
        retry waited for the slot). Raises :class:`TransitionConflict` if the slot was
        released already (a redelivered record, or the record and the reconciliation both
        freeing it).
        """
        failed = job.status is JobStatus.FAILED
        shard = JobModel.held_shard.set(RETRY_SHARD) if failed else JobModel.held_shard.remove()

        def build(tx: TransactWrite) -> None:
            tx.update(
                JobModel(job.job_id),
                actions=[JobModel.slot_held.remove(), shard],
                condition=(JobModel.status == job.status.value) & JobModel.slot_held.exists(),
            )
            tx.update(RepoModel(job.repo), actions=[RepoModel.running.add(-1)])

        reasons = self._commit(build, job_id=job.job_id, what="release slot")
        if reasons is not None:
            if reasons[0] == _CONDITION_FAILED:
                raise TransitionConflict(job.job_id, "release slot", "already released")
            raise StoreUnavailable(f"release of the slot of job {job.job_id} cancelled: {reasons}")
        log.info("slot released", extra={"job_id": job.job_id, "repo": job.repo})

    def settle_retry_verdict(self, job: JobState) -> None:
        """Take a failure that owes no automatic retry out of the reconciliation's index.

        Conditioned on the job being still the failure read (status and version) and marked:
        a retry made meanwhile removed the mark and moved the version. Not a transition: the
        version stays, and its stream record (no status change) calls for nothing. Raises
        :class:`TransitionConflict` if the job moved or was settled already.
        """
        self._update_job(
            job.job_id,
            actions=[JobModel.held_shard.remove()],
            condition=(JobModel.status == JobStatus.FAILED.value)
            & (JobModel.version == job.version)
            & (JobModel.held_shard == RETRY_SHARD),
            refused=TransitionConflict(job.job_id, "settle retry verdict"),
            what=f"retry verdict of job {job.job_id}",
        )

    def settle_pipeline(self, job: JobState) -> None:
        """Record that a queued job's commit has no pipeline file of its own (it runs as its
        one step): promotions may activate it from now on. For a job whose own activation
        was refused (its repository full); an activation takes the mark off itself.

        Not a transition: the version stays. Raises :class:`TransitionConflict` if the job
        moved or was settled already.
        """
        self._update_job(
            job.job_id,
            actions=[JobModel.pipeline_owed.remove()],
            condition=(JobModel.status == JobStatus.PENDING.value)
            & (JobModel.version == job.version)
            & JobModel.pipeline_owed.exists(),
            refused=TransitionConflict(job.job_id, "settle pipeline"),
            what=f"pipeline of job {job.job_id}",
        )

    def leave_runs(self, run_id: str) -> None:
        """Take a cancelled pipeline run out of the running pipelines' index once its steps
        all ended (nothing is owed any more). Not a transition; refused (as
        :class:`TransitionConflict`) when it is not there."""
        self._update_job(
            run_id,
            actions=[JobModel.deadline_shard.remove(), JobModel.deadline_at.remove()],
            condition=(JobModel.status == JobStatus.CANCELLED.value)
            & (JobModel.deadline_shard == RUN_SHARD),
            refused=TransitionConflict(run_id, "leave the running pipelines"),
            what=f"index entry of run {run_id}",
        )

    def clear_queue_mark(self, repo: str) -> bool:
        """Take ``repo`` out of the repositories with queued work, if it has no pending job.

        Conditioned on its pending count being 0: a job queued meanwhile (its transaction sets
        the mark and moves the count together) keeps the mark. True if it was cleared.
        """
        # Refused: a job is queued (again), and the mark stays.
        return self._update_repos_item(
            repo,
            "REMOVE queue_shard",
            "attribute_exists(repo) AND (attribute_not_exists(n_pending) OR n_pending <= :none)",
            {":none": {"N": "0"}},
            what=f"clear the queue mark of {repo}",
        )

    def release_trigger(self, job_id: str, trigger_key: str) -> None:
        """Let a new delivery of a cancelled job's commit build again: its trigger guard is
        expired if this job still holds it (else it changes nothing)."""
        # Refused: another job holds it now, or it is gone, and there is nothing to release.
        self._update_repos_item(
            TRIGGER_PREFIX + trigger_key,
            "SET last_received_at = :expired",
            "last_job_id = :job",
            {":expired": {"N": "0"}, ":job": {"S": job_id}},
            what=f"release the trigger of job {job_id}",
        )

    def _update_repos_item(
        self, key: str, update: str, condition: str, values: dict[str, Any], *, what: str
    ) -> bool:
        """One conditional UpdateItem of a repos-table item; False if its condition refused it.
        Anything else that fails is :class:`StoreUnavailable` (``what`` names the write)."""
        try:
            self._connection.client.update_item(
                TableName=RepoModel.Meta.table_name,
                Key={"repo": {"S": key}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise StoreUnavailable(f"cannot {what}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"cannot {what}: {exc}") from exc
        return True

    def _update_job(
        self,
        job_id: str,
        *,
        actions: list[Action],
        condition: Condition,
        refused: Exception,
        what: str,
    ) -> None:
        """One conditional UpdateItem of a job through this store's connection."""
        try:
            self._connection.update_item(
                job_table(self._connection), job_id, actions=actions, condition=condition
            )
        except PynamoDBException as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                metrics.refused("condition")
                raise refused from None
            raise StoreUnavailable(f"{what} failed: {cause(exc)}") from exc

    # -- building blocks --------------------------------------------------------------------

    def _job_actions(
        self,
        *,
        job: JobState,
        step: TransitionPlan,
        now: int,
        actor: str,
        attempt: int,
        outcome: Outcome,
        start_delay_ms: int = 0,
        handed_to: str | None = None,
        claimed: bool = False,
    ) -> list[Action]:
        entry = _entry(
            source=step.source,
            dest=step.dest,
            at=now,
            actor=actor,
            attempt=attempt,
            reason=outcome.reason,
            handed_to=handed_to,
        )
        actions: list[Action] = [
            JobModel.status.set(step.dest.value),
            JobModel.version.add(1),
            JobModel.updated_at.set(now),
            JobModel.history.set(JobModel.history.append([entry])),
        ]
        # What else the transition writes is its row's (state_machines.LIFECYCLE) effects;
        # this spells each effect out as attribute updates, whatever row names it.
        for effect in step.effects:
            actions += self._effect_actions(
                effect,
                job=job,
                now=now,
                attempt=attempt,
                outcome=outcome,
                start_delay_ms=start_delay_ms,
                claimed=claimed,
                in_runs=Effect.KEEP_IN_RUNS in step.effects,
                keeps_owed=Effect.KEEP_OWED in step.effects,
            )
        return actions

    def _activation_deadline(self, job: JobState, now: int, *, claimed: bool) -> int:
        """When the reaper next looks at a job it activates.

        Claimed in the same write (the local runtime, a hand-off): its timeout, with a grace for
        the start itself, since a full executor must not time out a run that has not begun.
        Unclaimed (the AWS runtime claims in the activation's record): only the grace, by when
        the record's claim (which resets the deadline to the timeout) is due; if that record is
        lost, the reaper starts the run itself then (idempotent by ``job_id#attempt``), instead
        of leaving the slot taken by nothing for the whole timeout.
        """
        waits = self._start_grace_ms + job.start_delay_ms
        return now + waits + (job.timeout_seconds * 1000 if claimed else 0)

    def _effect_actions(
        self,
        effect: Effect,
        *,
        job: JobState,
        now: int,
        attempt: int,
        outcome: Outcome,
        start_delay_ms: int,
        claimed: bool,
        in_runs: bool = False,
        keeps_owed: bool = False,
    ) -> list[Action]:
        """The attribute updates of one :class:`Effect` of a transition of ``job``;
        ``claimed``: the same write claims the attempt's run; ``in_runs``: the job stays in
        the running pipelines' index (a finish leaves its deadline keys to that effect)."""
        match effect:
            case Effect.ENTER_ACTIVE:
                return [
                    JobModel.activated_at.set(now),
                    JobModel.deadline_shard.set(ACTIVE_SHARD),
                    JobModel.deadline_at.set(self._activation_deadline(job, now, claimed=claimed)),
                    *_left_queue(),
                    JobModel.pipeline_owed.remove(),  # no file: the job is its own one step
                ]
            case Effect.RUN_STEPS:
                return [
                    JobModel.activated_at.set(now),
                    JobModel.started_at.set(now),
                    JobModel.deadline_shard.set(RUN_SHARD),
                    JobModel.deadline_at.set(now),
                    *_left_queue(),
                    JobModel.pipeline_owed.remove(),
                ]
            case Effect.ENTER_QUEUE:  # a retry (a new attempt) or an approval: queued
                return [
                    JobModel.waiting_repo.remove(),
                    JobModel.attempt.set(attempt),
                    # A retry's backoff travels with the job as data: the run of this attempt
                    # starts no earlier than this, and its activation deadline includes it.
                    JobModel.start_delay_ms.set(start_delay_ms),
                    JobModel.queue_repo.set(job.repo),
                    JobModel.queue_shard.set(QUEUED_SHARD),
                    JobModel.queue_key.set(queue_key(job.priority, job.received_at, job.job_id)),
                    *(
                        attr.remove()
                        for attr in (
                            JobModel.expires_at,
                            JobModel.finished_at,
                            JobModel.activated_at,
                            JobModel.started_at,
                            JobModel.reason,
                            JobModel.detail,
                            JobModel.exit_code,
                            JobModel.run_id,
                            JobModel.log_location,
                        )
                    ),
                ]
            case Effect.REOPEN | Effect.FORGET_RUN:
                return _rerun_actions(effect, attempt)
            case Effect.FINISH:  # passed, failed or cancelled
                return self._finish_actions(now, outcome, in_runs=in_runs, keeps_owed=keeps_owed)
            case Effect.KEEP_IN_RUNS:
                return [JobModel.deadline_shard.set(RUN_SHARD), JobModel.deadline_at.set(now)]
            case Effect.KEEP_OWED:
                return []  # the finish leaves ``pipeline_owed`` as it is
            case Effect.HOLD_SLOT:
                # Until its run is known stopped; the sparse `held_slots` index lets the
                # reconciliation find it if the record that frees the slot is lost.
                return [JobModel.slot_held.set(True), JobModel.held_shard.set(HELD_SHARD)]
            case Effect.MARK_RETRY:
                # A failure may owe an automatic retry, which its record makes; if the record
                # is lost, the reconciliation finds the failure here and makes it instead.
                return [JobModel.held_shard.set(RETRY_SHARD)]
            case Effect.CLEAR_RETRY_MARK:
                # A failure's retry, made: no verdict is owed any more (a cancelled job's
                # mark is its held slot, which a retry waits for, see _transition).
                return [JobModel.held_shard.remove()]
            case _:
                assert_never(effect)

    def _finish_actions(
        self, now: int, outcome: Outcome, *, in_runs: bool, keeps_owed: bool
    ) -> list[Action]:
        """A finish: its time and expiry, out of the queue, deadline and approval indexes (a
        cancelled pipeline run stays in the running pipelines' until its steps ended), the
        outcome."""
        expires = datetime.fromtimestamp((now + self._retention_ms) / 1000, tz=UTC)
        actions: list[Action] = [
            JobModel.finished_at.set(now),
            JobModel.expires_at.set(expires),
            *(() if keeps_owed else (JobModel.pipeline_owed.remove(),)),
            JobModel.waiting_repo.remove(),
            *(() if in_runs else (JobModel.deadline_shard.remove(),)),
            *(() if in_runs else (JobModel.deadline_at.remove(),)),
            *_left_queue(),
        ]
        if outcome.reason is not None:
            actions.append(JobModel.reason.set(outcome.reason))
        if outcome.detail is not None:
            actions.append(JobModel.detail.set(outcome.detail[:1000]))
        if outcome.exit_code is not None:
            actions.append(JobModel.exit_code.set(outcome.exit_code))
        return actions

    @staticmethod
    def _repo_changes(
        steps: Sequence[TransitionPlan], slot_limit: int | None
    ) -> tuple[list[Action], Condition | None]:
        """One update of the repository's counters for the ``steps`` of one write (a finish
        that hands its slot on moves two jobs: the counters of both, the slot count not)."""
        deltas: Counter[str] = Counter()
        for step in steps:
            deltas[count_attribute(step.source)] -= 1
            deltas[count_attribute(step.dest)] += 1
            deltas["running"] += step.slot_delta
        actions: list[Action] = [
            getattr(RepoModel, name).add(delta) for name, delta in deltas.items() if delta
        ]
        if any(Effect.ENTER_QUEUE in step.effects for step in steps):
            # A job joins the queue (a retry, an approval): its repository has queued work.
            actions.append(RepoModel.queue_shard.set(QUEUED_SHARD))
        condition: Condition | None = None
        if any(step.slot_delta > 0 for step in steps):
            assert slot_limit is not None
            actions.append(RepoModel.slot_limit.set(slot_limit))
            # Take a slot only while one is free (a slot handed on: while the limit still
            # allows it); the configured limit is passed in so that a configuration change
            # applies to the very next activation.
            below = slot_limit + 1 - deltas["running"]
            condition = RepoModel.running.does_not_exist() | (RepoModel.running < below)
        return actions, condition

    def _commit(
        self,
        build: Callable[[TransactWrite], None],
        *,
        job_id: str,
        what: str,
        items: list[dict[str, Any] | None] | None = None,
    ) -> list[str] | None:
        """Run the transaction; None when it committed, else the cancellation reason codes
        (and, into ``items``, the items a refused condition returned, by position).

        ``TransactionConflict`` cancellations (another transaction held one of the items) are
        retried with jittered backoff: nothing was decided, so trying again is safe.
        """
        for attempt in range(self._conflict_retries + 1):
            try:
                with TransactWrite(connection=self._connection) as tx:
                    build(tx)
                return None
            except TransactWriteError as exc:
                if exc.cause_response_code != "TransactionCanceledException":
                    raise StoreUnavailable(f"{what} of job {job_id} failed: {cause(exc)}") from exc
                codes = [reason.code if reason else "None" for reason in exc.cancellation_reasons]
                metrics.refused(
                    "transaction_conflict" if _TRANSACTION_CONFLICT in codes else "condition"
                )
                if _TRANSACTION_CONFLICT not in codes:
                    if items is not None:
                        items[:] = [r.raw_item if r else None for r in exc.cancellation_reasons]
                    return codes
                log.warning(
                    "transaction conflict, retrying",
                    extra={"job_id": job_id, "transition": what, "attempt": attempt},
                )
                self._sleep(random.uniform(0, 0.01 * 2**attempt))
            except PynamoDBException as exc:
                raise StoreUnavailable(f"{what} of job {job_id} failed: {cause(exc)}") from exc
        raise StoreContended(f"{what} of job {job_id}: items stayed contended, retry later")


@dataclass(frozen=True, slots=True)
class _GroupTake:
    """An activation's take of its concurrency group, as items of its transaction.

    The group's item names the last job that took it (``holder``); the group is free once that
    job holds no slot (it is not active, nor a finished job whose run may still go). So the
    take is: the item names this job, only if it still names the holder read, and only if
    that holder holds no slot now. Nothing ever has to give the group back: a job that ends
    frees it in its finishing write, and no lost record can leave it taken. Two activations
    racing for it are serialized on the item: one is refused.
    """

    key: str
    job_id: str
    holder: str | None

    @property
    def checks(self) -> int:
        """Condition checks among the items (DynamoDB's transactions put them first)."""
        # The job itself (a retry takes the group again): its own condition, pending and as
        # read, already says it holds no slot.
        return 0 if self.holder in (None, self.job_id) else 1

    def add_to(self, tx: TransactWrite) -> None:
        if self.checks:
            tx.condition_check(
                JobModel,
                self.holder,
                condition=JobModel.job_id.does_not_exist() | holds_no_slot(),
            )
        named = (
            RepoModel.holder.does_not_exist()
            if self.holder is None
            else RepoModel.holder == self.holder
        )
        tx.update(RepoModel(self.key), actions=[RepoModel.holder.set(self.job_id)], condition=named)


class _Keyed(Protocol):
    @property
    def job_id(self) -> str: ...


_K = TypeVar("_K", bound=_Keyed)


def _without_refused(batch: Sequence[_K], send: Callable[[list[_K]], set[str]]) -> list[str]:
    """Send ``batch`` as one write; while a refusal names jobs (there already, or moved since
    they were read), send it again without them. The ids written (each refusal takes at
    least one job out, so this ends)."""
    left = list(batch)
    while left:
        refused = send(left)
        if not refused:
            return [job.job_id for job in left]
        left = [job for job in left if job.job_id not in refused]
    return []


def _named_refusals(job_ids: Sequence[str], reasons: list[str], what: str) -> set[str]:
    """The jobs a cancelled batch transaction names (its job items first, in order: reason
    ``i`` is job ``i``'s); none named means the store's own refusal."""
    codes = zip(job_ids, reasons[: len(job_ids)], strict=True)
    refused = {job_id for job_id, code in codes if code == _CONDITION_FAILED}
    if not refused:
        raise StoreUnavailable(f"{what} from {job_ids[0]} cancelled: {reasons}")
    return refused


def _guarded(step: TransitionPlan, job_condition: Condition) -> Condition:
    """What a transition asks of the job besides what the caller read."""
    if step.next_attempt:
        # Rebuilding a cancelled or timed-out job waits until its old run is stopped and
        # its slot freed.
        job_condition &= JobModel.slot_held.does_not_exist()
    if step.dest is JobStatus.BLOCKED:
        # Only a pipeline's step waits for needs: a job of no run would never be unblocked.
        job_condition &= JobModel.run_of.exists()
    if step.trigger in (Trigger.EXPAND, Trigger.REFUSE):
        # Only a job whose pipeline file is owed becomes a pipeline run (or fails for its
        # file): a job of the operator's command expanded would run nothing, with no slot.
        job_condition &= JobModel.pipeline_owed.exists()
    return job_condition


def _left_queue() -> list[Action]:
    """A job that leaves the queue leaves its sparse indexes (``queued``, ``queued_by_age``)."""
    return [
        JobModel.queue_repo.remove(),
        JobModel.queue_shard.remove(),
        JobModel.queue_key.remove(),
    ]


def _rerun_actions(effect: Effect, attempt: int) -> list[Action]:
    """A re-run's effects: the job is not finished any more (REOPEN), and a re-run step has
    no run, nor times of one, while it waits again (FORGET_RUN)."""
    if effect is Effect.REOPEN:
        cleared = (
            JobModel.expires_at,
            JobModel.finished_at,
            JobModel.reason,
            JobModel.detail,
            JobModel.exit_code,
        )
        return [JobModel.attempt.set(attempt), *(attr.remove() for attr in cleared)]
    forgotten = (JobModel.activated_at, JobModel.started_at, JobModel.run_id, JobModel.log_location)
    return [attr.remove() for attr in forgotten]


def _refusal(
    reasons: list[str],
    job: JobState,
    step: TransitionPlan,
    slot_limit: int | None,
    *,
    hand_off: HandOff | None,
    group: _GroupTake | None = None,
    counters: Sequence[dict[str, Any] | None] | None = None,
) -> Exception:
    """Why a transition's transaction was cancelled (the reasons follow its items: the job,
    its repository, the job it hands its slot to or its concurrency group's items).
    ``counters``: what the refused items of an activation that must not overtake the queue
    returned (a free slot then means a queue)."""
    if group is not None and group.checks:
        # Condition checks go first in a transaction: read the other items by position.
        reasons = reasons[group.checks :] + reasons[: group.checks]
        if counters is not None:
            counters = [*counters[group.checks :], *counters[: group.checks]]
    if reasons[0] == _CONDITION_FAILED:
        return TransitionConflict(job.job_id, str(step.trigger))
    if hand_off is not None and _CONDITION_FAILED in reasons[1:]:
        return HandOffRefused(job.job_id, hand_off.job.job_id)
    if reasons[1] == _CONDITION_FAILED and step.slot_delta > 0:
        assert slot_limit is not None
        if counters is not None and _slot_was_free(counters, slot_limit):
            return QueueAhead(job.repo, slot_limit)
        return RepositoryFull(job.repo, slot_limit)
    if group is not None and _CONDITION_FAILED in reasons[2:]:
        assert job.concurrency_group is not None
        return GroupBusy(job.repo, job.concurrency_group)
    return StoreUnavailable(f"{step.trigger} of job {job.job_id} cancelled: {reasons}")


def _slot_was_free(items: Sequence[dict[str, Any] | None], slot_limit: int | None) -> bool:
    """Whether the repository's counters a refused activation returned (the second item) had
    a free slot: then its queue, not its limit, refused it."""
    counters = items[1] if len(items) > 1 else None
    if counters is None or slot_limit is None:
        return False
    running = int(counters.get("running", {}).get("N", "0"))
    return running < slot_limit


def _entry(
    *,
    source: JobStatus | None,
    dest: JobStatus,
    at: int,
    actor: str,
    attempt: int,
    reason: str | None,
    handed_to: str | None = None,
) -> HistoryEntry:
    return HistoryEntry(
        source=source.value if source else None,
        dest=dest.value,
        at=at,
        actor=actor,
        attempt=attempt,
        reason=reason,
        handed_to=handed_to,
    )
