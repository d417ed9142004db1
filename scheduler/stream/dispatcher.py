"""Carries out the actions of stream records with the store's guarded writes.

Every change of a job item reaches the stream processor as one DynamoDB stream record (possibly
more than once: a failed batch is retried, a crashed consumer re-reads from its checkpoint).
:mod:`scheduler.stream.decide` turns a record into a transition and its actions (pure); the
:class:`Dispatcher` here carries them out.

Why redelivery is harmless: every action is a conditional transaction on the status and version
the record's image shows, so a duplicate or stale record loses with :class:`TransitionConflict`,
which means "already done" and the record succeeds. Promotion is idempotent by construction: it
fills the repository's free slots with its oldest queued jobs, and a second run finds no free slot.

The slot-leak corner: a finish frees its slot in the finishing transaction itself, and the
stream record of that finish promotes the next job. If promotion fails (throttled, contended,
crashed), the record fails and is delivered again until promotion has run, so a freed slot is
always offered to the queue. A job that found its repository full stays queued; a full
repository has active jobs, and each of them finishes (or is reaped) and promotes.

Runs are started by the ``active`` record, never by the activation's writer: a write that
DynamoDB Local lost when it was killed loses its record too, so a lost activation leaves no
run behind and its job is promoted again. With a :class:`ClaimingStarter` (the local runtime)
the activation also claims the run for this runner, so the run needs no write of its own.

Within a batch, the finishes of one repository owe it one promotion, run at the end of the
batch (or before a record of that repository that may take a slot, so a new job never
overtakes the queue); if it fails, the first record that owed it is the one reported failed,
so it and everything after it come again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, assert_never

from scheduler import tracing
from scheduler.config import RetryPolicy, SupersedeMode
from scheduler.db.models import JobModel
from scheduler.db.outage import is_outage
from scheduler.db.store import Clock, JobState, JobStore, QueueAhead, RunClaimed, system_clock
from scheduler.errors import (
    BatchInterrupted,
    GroupBusy,
    MalformedStreamRecord,
    RepositoryFull,
)
from scheduler.runs.pipeline_driver import PipelineDriver
from scheduler.runs.pipeline_runs import step_retry
from scheduler.runs.reservations import Reservations
from scheduler.stream.decide import (
    NO_AUTOMATIC_RETRY,
    Action,
    Activate,
    PromoteQueued,
    ReleaseSlot,
    ReleaseTrigger,
    RetryFailed,
    SettleRetryVerdict,
    SettleRun,
    StartRun,
    StopRun,
    SupersedeOlder,
    Transition,
    TransitionObserver,
    decide,
    lane_of,
    lost_attempts_of,
    read_transition,
)
from scheduler.stream.events import PartialBatchResponse, StreamEvent, StreamRecord
from scheduler.stream.full_repos import FullRepos
from scheduler.stream.supersede import Superseder
from state_machines import JobStatus, TransitionConflict, Trigger

__all__ = ["ACTOR", "RETRY_ACTOR", "Dispatcher", "RunHook"]

log = logging.getLogger(__name__)

DEFAULT_SLOT_LIMIT = 2
ACTOR = "stream"
RETRY_ACTOR = "retry-policy"  # the history's actor of automatic retries

SlotLimitFor = Callable[[str], int]
"""The concurrency limit of a repository (``owner/name``)."""

RunHook = Callable[[JobModel, int], object]
"""Starts the run of a job that just became active, ``delay_ms`` after it is asked to.

Idempotent by ``job_id#attempt``. It gets the stream image as a model: everything the run
needs is there, no read is needed.
"""


class ClaimingStarter(Protocol):
    """Starts runs whose claim their activation wrote, naming this runner.

    With one, an activation writes the run's claim itself (one write and one stream record
    fewer per job), and the ``active`` record starts the run without claiming it again: only
    on the runner the claim names, and only if that runner never took the attempt's run.
    The start waits for the record on purpose: DynamoDB Local can lose a write it has just
    acknowledged when it is killed, and the record is lost with it, so a lost activation
    never leaves a run behind (the queue promotes the job again). Without one (a CLI replay,
    the AWS runtime) the ``active`` record's run claims itself (``JobStore.claim_run``).
    """

    def claim_for(self, job: JobModel) -> RunClaimed: ...

    def start_claimed(self, job: JobModel, delay_ms: int = 0) -> object: ...


StopHook = Callable[[str], None]
"""Asks a run to stop, by its id (CodeBuild's StopBuild only asks; a local stop waits)."""

StoppedHook = Callable[[str], bool]
"""Whether a run is known stopped (``Executor.stopped``): a slot moves only then."""

_AFTER_STOP = (ReleaseSlot, PromoteQueued, RetryFailed, SettleRetryVerdict, SettleRun)
"""What a record's stop must be confirmed for: the slot, and what takes it next."""

RetryPolicyFor = Callable[[str], RetryPolicy]
"""The automatic retry policy of a repository."""

SupersedeFor = Callable[[str], SupersedeMode]
"""The supersede mode of a repository (``off``, ``queued``, ``all``)."""


OWED_GRACE_MS = 30_000
"""How long a job's own record is left to read its pipeline file before promotions do."""
GROUP_LOOKAHEAD = 256
"""Queued jobs of concurrency groups found held that a promotion reads past, at most (a
pipeline's steps at most): the jobs queued behind them are not stranded while slots are free."""

_OUTAGE_MARGIN_MS = 10_000  # left for the last attempt and the response when time runs out


def _outage_pauses(base: float = 0.2, cap: float = 5.0) -> Iterator[float]:
    """Pauses between attempts of a record while the database is out: doubling, capped."""
    pause = base
    while True:
        yield pause
        pause = min(cap, pause * 2)


def _log_activation(job: JobModel, delay_ms: int) -> None:
    log.info("run requested", extra={"job_id": job.job_id, "attempt": job.attempt})


_TAKES_SLOTS = (Activate, SupersedeOlder)
"""Actions that must not overtake an owed promotion of their repository."""


class _Promotions:
    """Promotions a batch owes, by repository: the first record that asked for each."""

    def __init__(self) -> None:
        self.owed: dict[str, str] = {}
        self.current = ""  # the sequence number of the record being handled

    def owe(self, repo: str) -> None:
        self.owed.setdefault(repo, self.current)

    def first(self) -> str | None:
        return next(iter(self.owed.values()), None)

    def flush(self, dispatcher: Dispatcher, repo: str) -> None:
        if repo in self.owed:
            dispatcher.promote(repo)
            del self.owed[repo]  # only once it ran: a failed promotion stays owed


class Dispatcher:
    """Carries out the actions of stream records with the store's guarded writes."""

    def __init__(
        self,
        store: JobStore,
        *,
        slot_limit_for: SlotLimitFor = lambda _repo: DEFAULT_SLOT_LIMIT,
        start_run: RunHook | None = None,
        claiming_starter: ClaimingStarter | None = None,
        stop_run: StopHook | None = None,
        run_stopped: StoppedHook | None = None,
        retry_policy_for: RetryPolicyFor = lambda _repo: NO_AUTOMATIC_RETRY,
        supersede_for: SupersedeFor = lambda _repo: "off",
        observers: Iterable[TransitionObserver] = (),
        pipelines: PipelineDriver | None = None,
        full_repos: FullRepos | None = None,
        reservations: Reservations | None = None,
        promote_page: int = 5,
        promote_max: int = 25,
        actor: str = ACTOR,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self._clock = clock
        # Shared by the batches and lanes of this process (and its runner's hand-offs).
        self._full = full_repos or FullRepos(clock=clock)
        self._reservations = reservations or Reservations(clock=clock)
        self._promotion_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._slot_limit_for = slot_limit_for
        self._start_run = start_run or _log_activation
        self._claiming = claiming_starter
        self._stop_run = stop_run
        self._run_stopped = run_stopped
        self._retry_policy_for = retry_policy_for
        self._supersede_for = supersede_for
        self._superseder = Superseder(store)
        self._pipelines = pipelines
        self.observers = tuple(observers)
        self._promote_page = promote_page
        self._promote_max = promote_max
        self._actor = actor

    @property
    def runs_started(self) -> bool:
        """Whether this dispatcher starts runs (a CLI replay only logs activations)."""
        return self._start_run is not _log_activation or self._claiming is not None

    # The Lambda-shaped entry point -----------------------------------------------------------

    def handle_event(
        self,
        event: StreamEvent | Mapping[str, Any],
        *,
        time_left_ms: Callable[[], int] | None = None,
    ) -> PartialBatchResponse:
        """Process the records in order; stop at the first failure and report it.

        Later records of the shard are delivered again after the failed one anyway (the event
        source mapping resumes from the lowest reported sequence number), so processing them
        now would only do work twice, or out of order.

        A failure that is the database's (:func:`~scheduler.db.outage.is_outage`) is not the
        record's: with ``time_left_ms`` (Lambda's remaining time) the record is tried again
        with backoff while the invocation has time, then reported as failed; without it (the
        local runner) :class:`BatchInterrupted` tells the caller to wait for the database.
        """
        promotions = _Promotions()
        failed: str | None = None
        for record in event.get("Records", []):
            sequence_number = record["dynamodb"]["SequenceNumber"]
            promotions.current = sequence_number
            try:
                done = self._attempt(
                    functools.partial(self.handle_record, record, promotions),
                    sequence_number,
                    time_left_ms,
                )
            except BatchInterrupted as exc:
                # A record before this one still owes its repository a promotion: from there.
                first = promotions.first() or sequence_number
                raise BatchInterrupted(first, str(exc)) from exc
            if not done:
                failed = sequence_number
                break
        # The records before a failure succeeded: their promotions are owed all the same.
        for repo, first in list(promotions.owed.items()):
            if self._attempt(functools.partial(promotions.flush, self, repo), first, time_left_ms):
                continue
            failed = first if failed is None or int(first) < int(failed) else failed
            break  # the first failed promotion's record and all after it come again
        return {"batchItemFailures": [{"itemIdentifier": failed}] if failed else []}

    def _attempt(
        self,
        work: Callable[[], object],
        sequence_number: str,
        time_left_ms: Callable[[], int] | None,
    ) -> bool:
        """Do ``work`` for a record; False if the record failed (a database outage is retried
        while Lambda's time lasts, or raised as :class:`BatchInterrupted` locally)."""
        for pause in _outage_pauses():
            try:
                work()
                return True
            except Exception as exc:
                if not is_outage(exc):
                    log.exception(
                        "stream record failed", extra={"sequence_number": sequence_number}
                    )
                    return False
                if time_left_ms is None:
                    raise BatchInterrupted(sequence_number, str(exc)) from exc
                if time_left_ms() < pause * 1000 + _OUTAGE_MARGIN_MS:
                    log.warning(
                        "store unavailable; the invocation's time is up",
                        extra={"sequence_number": sequence_number, "error": str(exc)},
                    )
                    return False
                log.warning(
                    "store unavailable; trying the record again",
                    extra={"sequence_number": sequence_number, "pause_s": pause},
                )
                time.sleep(pause)
        raise AssertionError("unreachable")  # _outage_pauses never ends

    def handle_record(
        self, record: StreamRecord, promotions: _Promotions | None = None
    ) -> list[str]:
        """Carry out what one record calls for; return one outcome word per action.

        With ``promotions`` (a batch), a finish's promotion of its repository is owed to the end
        of the batch, so a batch of finishes of one repository promotes once.
        """
        try:
            transition = read_transition(record)
        except MalformedStreamRecord:
            if self._overtaken(record):
                return ["overtaken"]
            raise
        if transition is None:
            return []
        job = transition.job
        with tracing.work(
            "transition",
            trace_id=transition.image.trace_id,
            job_id=job.job_id,
            repo=job.repo,
            attempt=job.attempt,
            **{"from": transition.source.value if transition.source else "new"},
            to=transition.dest.value,
        ):
            return self._carry_out(transition, promotions)

    def _carry_out(
        self, transition: Transition, promotions: _Promotions | None = None
    ) -> list[str]:
        job = transition.job
        actions = decide(
            transition.source,
            transition.dest,
            job,
            reason=transition.reason,
            retry=self._policy_of(transition.image),
            run_id=transition.image.run_id,
            trigger_key=transition.image.trigger_key,
            lost_attempts=lost_attempts_of(transition.image),
            supersede=self._supersede_for(job.repo) if transition.source is None else "off",
            lane=lane_of(transition.image) if transition.source is None else None,
            handed_on=transition.handed_on,
            slot_held=bool(transition.image.slot_held),
            pipeline_run=transition.image.step_count is not None,
            run_of=transition.image.run_of,
        )
        if promotions is not None and any(isinstance(a, _TAKES_SLOTS) for a in actions):
            # A new job may take a slot: the queue's older jobs get theirs first, as if the
            # owed promotion had run with its own record.
            promotions.flush(self, job.repo)
        outcomes = []
        stopping = False
        for action in actions:
            if stopping and isinstance(action, _AFTER_STOP):
                # The run is not known stopped yet: its slot stays held, and the
                # reconciliation frees it (and makes what follows) once it is.
                outcomes.append("left_to_reconciliation")
                continue
            if promotions is not None and isinstance(action, PromoteQueued):
                promotions.owe(action.repo)
                outcomes.append("promotion_owed")
                continue
            if (
                isinstance(action, Activate)
                and not transition.image.pipeline_owed
                and self._known_full(transition.image)
            ):
                outcomes.append("queued")  # as its refused activation would have said
                continue
            with tracing.span(type(action).__name__, job_id=job.job_id):
                outcomes.append(self.execute(action, transition.image))
            stopping = stopping or outcomes[-1] == "stopping"
        for observe in self.observers:
            try:
                observe(transition)
            except Exception:  # an observer (a commit status) never fails a record
                log.exception("transition observer failed", extra={"job_id": job.job_id})
        return outcomes

    def _known_full(self, image: JobModel) -> bool:
        """Whether the job's repository was found full after the job joined its queue (see
        :mod:`scheduler.stream.full_repos`): its activation could only be refused."""
        queued_at = int(image.updated_at) if image.updated_at is not None else None
        return self._full.joined_before_full(image.repo, queued_at)

    def _overtaken(self, record: StreamRecord) -> bool:
        """Whether a record that cannot be read is about an item that changed since.

        Like any record overtaken by later changes of its job, it then calls for nothing: an
        operator who repaired or removed a poison item can replay its dead letter, and a poison
        record whose item was fixed before the stream reached it is not dead-lettered at all.
        """
        data = record.get("dynamodb", {})
        job_id = data.get("Keys", {}).get("job_id", {}).get("S")
        if not isinstance(job_id, str):
            return False
        if self._store.reads.raw(job_id) == data.get("NewImage"):
            return False
        log.warning(
            "unreadable record skipped: its item changed since",
            extra={"job_id": job_id, "sequence_number": data.get("SequenceNumber")},
        )
        return True

    # Actions ---------------------------------------------------------------------------------

    def execute(self, action: Action, image: JobModel) -> str:
        match action:
            case Activate(job=job):
                # A job whose pipeline is owed reads it first (and may never be activated).
                owed = image.pipeline_owed
                return self._expand(job, image) if owed else self._activate(job, image)
            case PromoteQueued(repo=repo):
                return f"promoted:{self.promote(repo)}"
            case StartRun(delay_ms=delay_ms):
                if image.run_id is not None and self._claiming is not None:
                    self._claiming.start_claimed(image, delay_ms)  # claimed by the activation
                else:
                    self._start_run(image, delay_ms)
                return "started"
            case RetryFailed(job=job, delay_ms=delay_ms):
                return self._retry(job, delay_ms)
            case StopRun(job=job, run_id=run_id):
                return self._stop(job, run_id)
            case ReleaseSlot(job=job):
                return self._release_slot(job)
            case ReleaseTrigger(job=job, trigger_key=key):
                self._store.release_trigger(job.job_id, key)
                return "trigger_released"
            case SupersedeOlder(job=job, lane=lane, mode=mode):
                return f"superseded:{self._superseder.run(job, lane, mode)}"
            case SettleRetryVerdict() | SettleRun():
                return self._settle_step(action)
            case _:
                assert_never(action)

    def _release_slot(self, job: JobState) -> str:
        try:
            self._store.release_slot(job)
        except TransitionConflict:
            return "already_done"  # a redelivered record: released the first time
        return "released"

    def _stop(self, job: JobState, run_id: str | None) -> str:
        if run_id is None:
            return "nothing_to_stop"
        if self._stop_run is None:
            # This process cannot stop runs (a CLI replay): the slot stays held, and the
            # engine's reconciliation (which has the executor) stops the run, frees the slot
            # once the run is known stopped, and makes what followed (the queue, a retry).
            log.warning(
                "stop left to the engine's reconciliation",
                extra={
                    "job_id": job.job_id,
                    "run_id": run_id,
                    "replay_note": f"job {job.job_id}: its run's stop and its slot are left to"
                    " the engine's reconciliation (held_slots)",
                },
            )
            return "stopping"
        self._stop_run(run_id)
        if self._run_stopped is not None and not self._run_stopped(run_id):
            # Asked, not yet done (CodeBuild stops a build asynchronously): the slot waits.
            log.info("run stopping", extra={"job_id": job.job_id, "run_id": run_id})
            return "stopping"
        log.info("run stopped", extra={"job_id": job.job_id, "run_id": run_id})
        return "stopped"

    def redrive_failed(self, image: JobModel) -> str:
        """Make what a failure's own record owed if it is lost: the automatic retry the policy
        gives (the same conditional ``failed -> pending`` the record makes, so the two race
        to one retry), or, when none is owed, take the failure out of the reconciliation's
        index. ``image`` is the failed item as read. Returns ``retried``, ``settled`` or
        ``already_done`` (it moved: the record, an operator or another round got there)."""
        job = JobState.from_model(image)
        owed = [
            action
            for action in decide(
                JobStatus.ACTIVE,
                JobStatus.FAILED,
                job,
                reason=image.reason,
                retry=self._policy_of(image),
                lost_attempts=lost_attempts_of(image),
            )
            if isinstance(action, RetryFailed)
        ]
        if owed:
            return self._retry(job, owed[0].delay_ms)
        try:
            self._store.settle_retry_verdict(job)
        except TransitionConflict:
            return "already_done"
        return "settled"

    def settle_run(self, run_id: str) -> str:
        """A pipeline run's fan-in (or its cancel's), as its steps' records make it: for the
        reconciliation, when one of those records was lost. ``left_to_engine`` in a process
        that reads no pipelines."""
        if self._pipelines is None:
            return "left_to_engine"  # a CLI replay: the engine's reconciliation does it
        return self._pipelines.settle(run_id)

    def _settle_step(self, action: SettleRetryVerdict | SettleRun) -> str:
        """A pipeline step ended for good: its verdict, then its run's fan-in."""
        if isinstance(action, SettleRetryVerdict):
            try:
                self._store.settle_retry_verdict(action.job)
            except TransitionConflict:
                return "already_done"
            return "settled"
        return f"run:{self.settle_run(action.run_id)}"

    def _policy_of(self, image: JobModel) -> RetryPolicy:
        """The automatic retry policy of a job: a pipeline step's own, else its repository's."""
        own = step_retry(image)
        return own if own is not None else self._retry_policy_for(image.repo)

    def _expand(self, job: JobState, image: JobModel) -> str:
        """A job whose pipeline is owed: read it (see :class:`PipelineDriver`); with no file of
        its own, the job is activated as its one step, as any other."""
        if self._pipelines is None:
            return "left_to_engine"  # a CLI replay reads no pipeline files
        expanded = self._pipelines.expand(image)
        if expanded != "config":
            return f"pipeline:{expanded}"
        # Its repository known full: its activation could only be refused (a write saved).
        outcome = "queued" if self._known_full(image) else self._activate(job, image)
        if outcome == "queued":
            # Refused a slot: it waits in its queue, where promotions may now take it.
            with contextlib.suppress(TransitionConflict):
                self._store.settle_pipeline(job)
            # The promotions that refused it skipped it while it was owed.
            if job.job_id in self._promote_ids_locked(job.repo):
                return "activated"
        return outcome

    def _retry(self, job: JobState, delay_ms: int) -> str:
        try:
            self._store.transition(job, Trigger.RETRY, actor=RETRY_ACTOR, start_delay_ms=delay_ms)
        except TransitionConflict:
            return "already_done"  # an operator (or a duplicate record) retried it first
        log.info("job retried by policy", extra={"job_id": job.job_id, "delay_ms": delay_ms})
        return "retried"

    def _activate(self, job: JobState, image: JobModel) -> str:
        try:
            # Under the repository's promotion lock: a promotion that read this job from the
            # queue activates it first, or finds it gone from the queue.
            with self._promotion_lock(job.repo):
                try:
                    self._activate_claiming(job, image, self._slot_limit_for(job.repo), alone=True)
                except QueueAhead:
                    # Other jobs are queued (an older one's promotion may be owed by a record
                    # elsewhere, or lost): the free slots go to the queue in its order, this
                    # job in its turn.
                    if job.job_id in self._promote_ids(job.repo):
                        return "activated"
                    log.info("job queued behind older ones", extra={"job_id": job.job_id})
                    return "queued"
        except TransitionConflict:
            # The job moved since this image was written (a duplicate record, or a promotion
            # got there first): the activation is already decided, so the record is done.
            return "already_done"
        except RepositoryFull:
            # Stays queued: the sparse `queued` index holds it until a finish promotes it.
            self._full.found_full(job.repo)
            log.info("job queued", extra={"job_id": job.job_id, "repo": job.repo})
            return "queued"
        except GroupBusy as busy:
            # Stays queued: the end of its group's holder promotes the queue.
            log.info(
                "job waits for its concurrency group",
                extra={"job_id": job.job_id, "group": busy.group},
            )
            return "queued"
        return "activated"

    def _activate_claiming(
        self, job: JobState, image: JobModel, slot_limit: int, *, alone: bool = False
    ) -> None:
        """Activate ``job`` (``image`` is its pending item); with a claiming starter the
        activation also claims the run for this runner. ``alone``: only if no other job of
        its repository is queued (:class:`QueueAhead` otherwise)."""
        if not self._reservations.reserve(job.job_id):
            # A hand-off (or another lane) is activating it right now: that write decides.
            raise TransitionConflict(job.job_id, Trigger.ACTIVATE.value, "being activated here")
        try:
            claim = self._claiming.claim_for(image) if self._claiming is not None else None
            self._store.activate(
                job, slot_limit=slot_limit, actor=self._actor, claim=claim, alone=alone
            )
        finally:
            self._reservations.release(job.job_id)

    def promote(self, repo: str) -> int:
        """Activate the oldest queued jobs of ``repo`` while it has free slots.

        Reads the sparse `queued` index (priority, then age), never scans. Idempotent: run twice,
        the second run finds the slots taken. Candidates that moved since the index was read
        lose their conditional write and are skipped.
        """
        stale: list[JobModel] = []
        with self._promotion_lock(repo):
            promoted = len(self._promote_ids(repo, stale))
        for image in stale:
            # Owed a pipeline for long: its record was lost, or its file unavailable so far.
            outcome = self._expand(JobState.from_model(image), image)
            promoted += outcome == "activated"
        return promoted

    def _promote_ids_locked(self, repo: str) -> list[str]:
        with self._promotion_lock(repo):
            return self._promote_ids(repo)

    def _promotion_lock(self, repo: str) -> threading.Lock:
        """One promotion of a repository at a time in this process: lanes that promote it at
        once would read the same head of the queue and race for the same jobs."""
        with self._locks_guard:
            return self._promotion_locks.setdefault(repo, threading.Lock())

    def _promote_ids(self, repo: str, stale: list[JobModel] | None = None) -> list[str]:
        """:meth:`_promote`, naming the jobs it activated. Jobs whose pipeline is owed are
        passed over (their own record reads it); those owed for longer than a grace go to
        ``stale``, for the caller to expand outside the promotion lock. Jobs of a concurrency
        group found held are passed over too, and do not count against the jobs read: the
        jobs behind them (up to :data:`GROUP_LOOKAHEAD` of them) still get the free slots."""
        limit = self._slot_limit_for(repo)
        activated: list[str] = []
        free: int | None = None  # read once the queue has a candidate
        busy: set[str] = set()  # concurrency groups found held: their jobs wait, others go on
        considered = 0
        queued = self._store.reads.queued(
            repo,
            limit=self._promote_max + GROUP_LOOKAHEAD,
            page_size=self._promote_page,
            growing=True,
        )
        for candidate in queued:
            job = JobState.from_model(candidate)
            if job.concurrency_group in busy:
                continue
            considered += 1
            if considered > self._promote_max:
                break
            if not self._promotable(job, candidate, stale):
                continue
            if free is None:
                # The counters say how many activations can succeed; the rest would only be
                # refused. A count that is stale either way is safe: each activation checks it
                # in its own write, and whoever frees a slot later promotes after it.
                free = limit - self._store.reads.slots_in_use(repo)
            if len(activated) >= free:
                break
            try:
                self._activate_claiming(job, candidate, limit)
            except TransitionConflict:
                continue
            except GroupBusy as held:
                busy.add(held.group)
                continue
            except RepositoryFull:
                self._full.found_full(repo)
                break
            activated.append(job.job_id)
        if activated:
            log.info("queue promoted", extra={"repo": repo, "promoted": len(activated)})
        return activated

    def _promotable(self, job: JobState, candidate: JobModel, stale: list[JobModel] | None) -> bool:
        """Whether a queued job read from the index may be activated now."""
        if job.status is not JobStatus.PENDING:
            return False  # the index lags the table a little on AWS
        if candidate.pipeline_owed:
            if stale is not None and job.received_at < self._clock() - OWED_GRACE_MS:
                stale.append(candidate)
            return False
        return True
