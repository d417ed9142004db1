"""Delivery -> job: verify, interpret, filter by configuration, create at most once.

Two guards make a job creation idempotent, both inside *one* ``TransactWriteItems`` request,
so there is neither a scan nor a window between check and write:

1. **the delivery**: the job id is derived from ``X-GitHub-Delivery`` and the job is put on
   condition that it does not exist. GitHub's redelivery reuses the delivery id, so it finds
   the job and gets the same job id back (200).
2. **the trigger**: a small guard item in the ``repos`` table (which has no stream, so it never
   reaches the stream processor), keyed ``trigger#<sha256(repo, event, ref or PR, sha)>``,
   is written on condition that it does not exist (or is older than the retention window).
   A *different* delivery asking to build the same commit for the same trigger fails that
   condition, and is answered 200 with the job id the guard item names.

The third item of the transaction is the repository's counters item, moved exactly as
:meth:`scheduler.store.JobStore.create` moves it (``n_pending`` + 1, ``last_job_id``,
``last_received_at``); a test proves both writes produce the same job item and counters.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.transactions import TransactWrite

from scheduler.config import RepositoryConfig
from scheduler.errors import ConfigurationError, JobExists, StoreUnavailable
from scheduler.github import (
    SIGNATURE_HEADER,
    BuildRequest,
    Ignored,
    Ping,
    interpret,
    parse_delivery,
    verify_signature,
)
from scheduler.models import HistoryEntry, JobModel, RepoModel
from scheduler.settings import Settings
from scheduler.store import DAY_MS, Clock, JobStore, NewJob, StoreContended, queue_key
from state_machines import JobStatus

__all__ = [
    "TRIGGER_PREFIX",
    "TriggerSeen",
    "WebhookAnswer",
    "WebhookService",
    "create_guarded",
    "webhook_secret",
]

log = logging.getLogger(__name__)

TRIGGER_PREFIX = "trigger#"
_CONDITION_FAILED = "ConditionalCheckFailed"
_TRANSACTION_CONFLICT = "TransactionConflict"
# Positions in the transaction's cancellation reasons: PynamoDB sends puts before updates, in
# the order they were added (see `create_guarded`).
_JOB, _TRIGGER = 0, 1


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What to answer GitHub: an HTTP status and a JSON object."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TriggerSeen:
    """Another delivery already queued this commit for this trigger; nothing was written."""

    job_id: str


def webhook_secret(settings: Settings) -> bytes | None:
    """The HMAC key, or None only under the explicit local opt-out.

    Refusing to start without a secret (rather than accepting unsigned deliveries) is the safe
    default: anybody who can reach the endpoint could otherwise queue builds.
    """
    if settings.webhook_secret:
        return settings.webhook_secret.encode("utf-8")
    if not settings.allow_unsigned_webhooks:
        raise ConfigurationError(
            "GITHUB_WEBHOOK_SECRET is not set: refusing to accept unsigned webhook deliveries"
            " (for a local demo only, set SCHEDULER_ALLOW_UNSIGNED_WEBHOOKS=1)"
        )
    if settings.dynamodb_endpoint is None:
        raise ConfigurationError(
            "SCHEDULER_ALLOW_UNSIGNED_WEBHOOKS is for local demos only and needs a local"
            " SCHEDULER_DYNAMODB_ENDPOINT; set GITHUB_WEBHOOK_SECRET instead"
        )
    log.warning(
        "INSECURE: no GITHUB_WEBHOOK_SECRET; webhook signatures are NOT checked and anyone"
        " who can reach this endpoint can queue jobs (SCHEDULER_ALLOW_UNSIGNED_WEBHOOKS)"
    )
    return None


class WebhookService:
    """Turns one delivery (lower-case headers and the raw body) into at most one job."""

    def __init__(
        self,
        store: JobStore,
        config: RepositoryConfig,
        *,
        secret: bytes | None,
        clock: Clock,
        guard_window_ms: int = 30 * DAY_MS,
        conflict_retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._config = config
        self._secret = secret
        self._clock = clock
        self._guard_window_ms = guard_window_ms
        self._conflict_retries = conflict_retries
        self._sleep = sleep

    def receive(self, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        # The signature first: an unauthenticated caller learns nothing about what we accept.
        if self._secret is not None:
            verify_signature(self._secret, body, headers.get(SIGNATURE_HEADER))
        delivery = parse_delivery(headers, body)
        wanted = interpret(delivery)
        if isinstance(wanted, Ping):
            return WebhookAnswer(200, {"reason": "pong"})
        if isinstance(wanted, BuildRequest):
            wanted = self._filter(wanted)
        if isinstance(wanted, Ignored):
            log.info(
                "delivery ignored",
                extra={"delivery_id": delivery.delivery_id, "event": delivery.event},
            )
            return WebhookAnswer(202, {"reason": wanted.reason})
        return self._create(wanted)

    def _filter(self, build: BuildRequest) -> BuildRequest | Ignored:
        """The repository configuration's say: accepted repository, built branch or tag."""
        if not self._config.accepts(build.repo):
            return Ignored(f"repository {build.repo} is not accepted by the configuration")
        policy = self._config.policy(build.repo)
        if build.tag is not None:
            if not policy.builds_tag(build.tag):
                return Ignored(f"tag {build.tag} is not built by the configuration")
            return build
        # A pull request is filtered by the branch it targets, a push by the branch it moves.
        branch = build.base_branch if build.pr_number is not None else build.branch
        if branch is not None and not policy.builds_branch(branch):
            return Ignored(f"branch {branch} is not built by the configuration")
        return build

    def _create(self, build: BuildRequest) -> WebhookAnswer:
        policy = self._config.policy(build.repo)
        new = NewJob(
            job_id=build.job_id,
            repo=build.repo,
            event=build.event,
            sha=build.sha,
            timeout_seconds=policy.timeout_seconds,
            ref=build.ref,
            branch=build.branch,
            pr_number=build.pr_number,
            sender=build.sender,
            delivery_id=build.delivery_id,
            priority=policy.priority,
        )
        fields = {"job_id": new.job_id, "repo": new.repo, "delivery_id": new.delivery_id}
        try:
            result = create_guarded(
                self._store,
                new,
                build.trigger_key,
                now=self._clock(),
                guard_window_ms=self._guard_window_ms,
                conflict_retries=self._conflict_retries,
                sleep=self._sleep,
            )
        except JobExists:
            log.info("delivery already seen", extra=fields)
            return WebhookAnswer(200, {"job_id": new.job_id, "reason": "delivery already seen"})
        if isinstance(result, TriggerSeen):
            log.info("commit already queued", extra={**fields, "existing_job_id": result.job_id})
            return WebhookAnswer(
                200,
                {
                    "job_id": result.job_id,
                    "reason": "this commit is already queued for this trigger",
                },
            )
        log.info("job created", extra=fields)
        return WebhookAnswer(202, {"job_id": new.job_id})


def create_guarded(
    store: JobStore,
    new: NewJob,
    trigger_key: str,
    *,
    now: int,
    actor: str = "webhook",
    guard_window_ms: int = 30 * DAY_MS,
    conflict_retries: int = 4,
    sleep: Callable[[float], None] = time.sleep,
) -> TriggerSeen | None:
    """Write a new pending job, count it and claim its trigger, all or nothing.

    Returns None when created, :class:`TriggerSeen` when another job holds the trigger; raises
    :class:`JobExists` when the job (this delivery) is already there. The job item and the
    counters are exactly those of :meth:`JobStore.create`.
    """
    job = JobModel(
        new.job_id,
        repo=new.repo,
        event=new.event,
        sha=new.sha,
        ref=new.ref,
        branch=new.branch,
        pr_number=new.pr_number,
        sender=new.sender,
        delivery_id=new.delivery_id,
        status=JobStatus.PENDING.value,
        attempt=1,
        version=0,
        priority=new.priority,
        timeout_seconds=new.timeout_seconds,
        received_at=now,
        updated_at=now,
        history=[
            # PynamoDB's MapAttribute constructor is untyped.
            HistoryEntry(  # type: ignore[no-untyped-call]
                source=None, dest=JobStatus.PENDING.value, at=now, actor=actor, attempt=1
            )
        ],
        queue_repo=new.repo,
        queue_key=queue_key(new.priority, now, new.job_id),
    )
    guard_key = TRIGGER_PREFIX + trigger_key

    def build(tx: TransactWrite) -> None:
        # 1. The job, only if this delivery never made it (the id is the delivery's).
        tx.save(job, condition=JobModel.job_id.does_not_exist())
        # 2. The trigger guard, only if no job claimed (repo, event, ref or PR, sha) within the
        #    window. A guard older than that is taken over: its job has expired by then.
        tx.update(
            RepoModel(guard_key),
            actions=[RepoModel.last_job_id.set(new.job_id), RepoModel.last_received_at.set(now)],
            condition=(
                RepoModel.repo.does_not_exist()
                | (RepoModel.last_received_at < now - guard_window_ms)
            ),
        )
        # 3. The repository's counters, moved with the job and never apart from it.
        tx.update(
            RepoModel(new.repo),
            actions=[
                RepoModel.n_pending.add(1),
                RepoModel.last_job_id.set(new.job_id),
                RepoModel.last_received_at.set(now),
            ],
        )

    for attempt in range(conflict_retries + 1):
        try:
            with TransactWrite(connection=store.connection) as tx:
                build(tx)
            return None
        except TransactWriteError as exc:
            if exc.cause_response_code != "TransactionCanceledException":
                raise StoreUnavailable(f"create of job {new.job_id} failed: {_cause(exc)}") from exc
            codes = [reason.code if reason else "None" for reason in exc.cancellation_reasons]
            if codes[_JOB] == _CONDITION_FAILED:
                raise JobExists(new.job_id) from None
            if codes[_TRIGGER] == _CONDITION_FAILED:
                return TriggerSeen(_guard_owner(store, guard_key, new.job_id))
            if _TRANSACTION_CONFLICT not in codes:
                raise StoreUnavailable(f"create of job {new.job_id} cancelled: {codes}") from exc
            # Another transaction held one of the items; nothing was decided, so try again.
            log.warning(
                "transaction conflict, retrying",
                extra={"job_id": new.job_id, "transition": "create", "attempt": attempt},
            )
            sleep(random.uniform(0, 0.01 * 2**attempt))
        except PynamoDBException as exc:
            raise StoreUnavailable(f"create of job {new.job_id} failed: {_cause(exc)}") from exc
    raise StoreContended(f"create of job {new.job_id}: items stayed contended, retry later")


def _guard_owner(store: JobStore, guard_key: str, job_id: str) -> str:
    """The job id a trigger guard names (it exists: its condition just failed).

    Read through the store's connection, whose client is already made: creating botocore
    clients from many threads at once (what a race of deliveries does) takes seconds.
    """
    try:
        found = store.connection.client.get_item(
            TableName=RepoModel.Meta.table_name,
            Key={"repo": {"S": guard_key}},
            ConsistentRead=True,
            ProjectionExpression="last_job_id",
        )
    except (BotoCoreError, ClientError) as exc:
        raise StoreUnavailable(f"cannot read trigger guard of job {job_id}: {exc}") from exc
    owner = found.get("Item", {}).get("last_job_id", {}).get("S")
    if not owner:
        raise StoreUnavailable(f"trigger guard of job {job_id} vanished; retry")
    return str(owner)


def _cause(exc: PynamoDBException) -> str:
    code = exc.cause_response_code
    message = exc.cause_response_message or str(exc.cause or exc)
    return f"{code}: {message}" if code else message
