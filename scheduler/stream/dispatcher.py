"""Stream record -> transition -> actions.

Every change of a job item reaches the stream processor as one DynamoDB stream record (possibly
more than once: a failed batch is retried, a crashed consumer re-reads from its checkpoint).
This module turns a record into the job's *transition* (old status, new status), decides what
that transition calls for with a pure function (:func:`decide`, actions are frozen dataclasses)
and carries the actions out with guarded writes (:class:`Dispatcher`).

Why redelivery is harmless: every action is a conditional transaction on the status and version
the record's image shows, so a duplicate or stale record loses with :class:`TransitionConflict`,
which means "already done" and the record succeeds. Promotion is idempotent by construction: it
fills the repository's free slots with its oldest queued jobs, and a second run finds no free slot.

The slot-leak corner: a finish frees its slot in the finishing transaction itself, and the
stream record of that finish promotes the next job. If promotion fails (throttled, contended,
crashed), the record fails and is delivered again until promotion has run, so a freed slot is
always offered to the queue. A job that found its repository full stays queued; a full
repository has active jobs, and each of them finishes (or is reaped) and promotes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from pynamodb.exceptions import PynamoDBException

from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, RepositoryFull
from scheduler.errors import MalformedStreamRecord, StoreUnavailable
from state_machines import JobStatus, TransitionConflict, Trigger

log = logging.getLogger(__name__)

DEFAULT_SLOT_LIMIT = 2
ACTOR = "stream"
RETRY_ACTOR = "retry-policy"  # the history's actor of automatic retries

SlotLimitFor = Callable[[str], int]
"""The concurrency limit of a repository (``owner/name``)."""

OnActivated = Callable[[JobModel], object]
"""Starts the run of a job that just became active (idempotent by ``job_id#attempt``).

It gets the stream image as a model: everything the run needs is there, no read is needed.
"""

RetryPolicyFor = Callable[[str], "AutoRetryPolicy"]
"""The automatic retry policy of a repository."""


# -- event shapes (Lambda's DynamoDB stream event and its partial batch response) -------------


class StreamRecordData(TypedDict):
    Keys: dict[str, Any]
    SequenceNumber: str
    SizeBytes: int
    StreamViewType: str
    ApproximateCreationDateTime: NotRequired[float]
    NewImage: NotRequired[dict[str, Any]]
    OldImage: NotRequired[dict[str, Any]]


class StreamRecord(TypedDict):
    eventID: str
    eventName: Literal["INSERT", "MODIFY", "REMOVE"]
    eventVersion: str
    eventSource: str
    awsRegion: str
    dynamodb: StreamRecordData
    eventSourceARN: str


class StreamEvent(TypedDict):
    Records: list[StreamRecord]


class BatchItemFailure(TypedDict):
    itemIdentifier: str


class PartialBatchResponse(TypedDict):
    batchItemFailures: list[BatchItemFailure]


# -- actions (data) and the pure decision --------------------------------------------------


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
    """The job became active: start its run."""

    job: JobState


@dataclass(frozen=True, slots=True)
class RetryFailed:
    """The job failed for ``reason``: retry it if the repository's policy says so."""

    job: JobState
    reason: str | None


Action = Activate | PromoteQueued | StartRun | RetryFailed


@dataclass(frozen=True, slots=True)
class AutoRetryPolicy:
    """Automatic retries: ``attempts`` in total (1 = none), for the failure reasons in ``on``."""

    attempts: int = 1
    on: tuple[str, ...] = ()

    def allows(self, attempt: int, reason: str | None) -> bool:
        return attempt < self.attempts and (reason or "") in self.on


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


TransitionObserver = Callable[[Transition], None]
"""Told of every transition once its actions succeeded (commit statuses, metrics)."""


def decide(
    source: JobStatus | None, dest: JobStatus, job: JobState, reason: str | None = None
) -> list[Action]:
    """What the transition ``source -> dest`` of ``job`` calls for (pure, no I/O)."""
    if dest is JobStatus.PENDING and source in (None, JobStatus.FAILED):
        return [Activate(job)]  # a new job, or an operator's retry: queue or run it
    if dest is JobStatus.ACTIVE and source is JobStatus.PENDING:
        return [StartRun(job)]
    if source is JobStatus.ACTIVE and dest.is_terminal:
        # The finishing transaction already released the slot; hand it to the queue.
        if dest is JobStatus.FAILED:
            return [PromoteQueued(job.repo), RetryFailed(job, reason)]
        return [PromoteQueued(job.repo)]
    return []  # e.g. pending -> cancelled: no slot was held, nothing to do


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


# -- the executor --------------------------------------------------------------------------


def _log_activation(job: JobModel) -> None:
    log.info("run requested", extra={"job_id": job.job_id, "attempt": job.attempt})


class Dispatcher:
    """Carries out the actions of stream records with the store's guarded writes."""

    def __init__(
        self,
        store: JobStore,
        *,
        slot_limit_for: SlotLimitFor = lambda _repo: DEFAULT_SLOT_LIMIT,
        on_activated: OnActivated | None = None,
        retry_policy_for: RetryPolicyFor = lambda _repo: AutoRetryPolicy(),
        observers: Iterable[TransitionObserver] = (),
        promote_page: int = 5,
        promote_max: int = 25,
        actor: str = ACTOR,
    ) -> None:
        self._store = store
        self._slot_limit_for = slot_limit_for
        self._on_activated = on_activated or _log_activation
        self._retry_policy_for = retry_policy_for
        self._observers = tuple(observers)
        self._promote_page = promote_page
        self._promote_max = promote_max
        self._actor = actor

    # The Lambda-shaped entry point -----------------------------------------------------------

    def handle_event(self, event: StreamEvent | Mapping[str, Any]) -> PartialBatchResponse:
        """Process the records in order; stop at the first failure and report it.

        Later records of the shard are delivered again after the failed one anyway (the event
        source mapping resumes from the lowest reported sequence number), so processing them
        now would only do work twice, or out of order.
        """
        for record in event.get("Records", []):
            try:
                self.handle_record(record)
            except Exception:
                sequence_number = record["dynamodb"]["SequenceNumber"]
                log.exception(
                    "stream record failed",
                    extra={"sequence_number": sequence_number, "event_id": record.get("eventID")},
                )
                return {"batchItemFailures": [{"itemIdentifier": sequence_number}]}
        return {"batchItemFailures": []}

    def handle_record(self, record: StreamRecord) -> list[str]:
        """Carry out what one record calls for; return one outcome word per action."""
        transition = read_transition(record)
        if transition is None:
            return []
        actions = decide(transition.source, transition.dest, transition.job, transition.reason)
        outcomes = [self.execute(action, transition.image) for action in actions]
        for observe in self._observers:
            try:
                observe(transition)
            except Exception:  # an observer (a commit status) never fails a record
                log.exception("transition observer failed", extra={"job_id": transition.job.job_id})
        return outcomes

    # Actions ---------------------------------------------------------------------------------

    def execute(self, action: Action, image: JobModel) -> str:
        if isinstance(action, Activate):
            return self._activate(action.job)
        if isinstance(action, PromoteQueued):
            promoted = self._promote(action.repo)
            return f"promoted:{promoted}"
        if isinstance(action, RetryFailed):
            return self._retry(action.job, action.reason)
        self._on_activated(image)
        return "started"

    def _retry(self, job: JobState, reason: str | None) -> str:
        if not self._retry_policy_for(job.repo).allows(job.attempt, reason):
            return "no_retry"
        try:
            self._store.transition(job, Trigger.RETRY, actor=RETRY_ACTOR)
        except TransitionConflict:
            return "already_done"  # an operator (or a duplicate record) retried it first
        log.info("job retried by policy", extra={"job_id": job.job_id, "reason": reason})
        return "retried"

    def _activate(self, job: JobState) -> str:
        try:
            result = self._store.activate(
                job, slot_limit=self._slot_limit_for(job.repo), actor=self._actor
            )
        except TransitionConflict:
            # The job moved since this image was written (a duplicate record, or a promotion
            # got there first): the activation is already decided, so the record is done.
            return "already_done"
        if isinstance(result, RepositoryFull):
            # Stays queued: the sparse `queued` index holds it until a finish promotes it.
            log.info("job queued", extra={"job_id": job.job_id, "repo": job.repo})
            return "queued"
        return "activated"

    def _promote(self, repo: str) -> int:
        """Activate the oldest queued jobs of ``repo`` while it has free slots.

        Reads the sparse `queued` index (priority, then age), never scans. Idempotent: run twice,
        the second run finds the slots taken. Candidates that moved since the index was read
        lose their conditional write and are skipped.
        """
        limit = self._slot_limit_for(repo)
        promoted = 0
        try:
            candidates: Iterable[JobModel] = JobModel.queued.query(
                repo, limit=self._promote_max, page_size=self._promote_page
            )
            for candidate in candidates:
                job = JobState.from_model(candidate)
                if job.status is not JobStatus.PENDING:
                    continue  # the index lags the table a little on AWS
                try:
                    result = self._store.activate(job, slot_limit=limit, actor=self._actor)
                except TransitionConflict:
                    continue
                if isinstance(result, RepositoryFull):
                    break
                promoted += 1
        except PynamoDBException as exc:
            raise StoreUnavailable(f"cannot read the queue of {repo}: {exc}") from exc
        if promoted:
            log.info("queue promoted", extra={"repo": repo, "promoted": promoted})
        return promoted
