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
   condition, and is answered 200 with the job id the guard item names. A reopened pull
   request is the exception: it asks to build its head again, so its key also names that
   reopening, by fields of the signed body (the action and ``pull_request.updated_at``:
   :attr:`~scheduler.github.payload.BuildRequest.rebuild`). Never by the delivery header,
   which is not signed: a replay of one body under fresh delivery ids finds the same job.

The third item of the transaction is the repository's counters item. The transaction itself
is :meth:`scheduler.db.store.JobStore.create` with a :class:`~scheduler.db.store.TriggerGuard`: the
store stays the only writer of jobs and counters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler import tracing
from scheduler.config import RepositoryConfig
from scheduler.db.models import JobModel
from scheduler.db.store import (
    DAY_MS,
    TRIGGER_PREFIX,
    Clock,
    JobState,
    JobStore,
    NewJob,
    Outcome,
    TriggerGuard,
)
from scheduler.errors import ConfigurationError, JobExists, TriggerSeen
from scheduler.github.app_events import CheckRunRequest, CheckSuiteRequest, InstallationChange
from scheduler.github.clone_urls import DEFAULT_GITHUB_HOST
from scheduler.github.payload import (
    BuildRequest,
    ClosedPullRequest,
    Ignored,
    Ping,
    interpret,
    parse_delivery,
)
from scheduler.github.signature import SIGNATURE_HEADER, verify_signature
from scheduler.settings import WEBHOOK_SECRET_MIN_CHARS, Settings
from state_machines import JobStatus, TransitionConflict, Trigger

__all__ = [
    "TRIGGER_PREFIX",
    "WebhookAnswer",
    "WebhookService",
    "create_guarded",
    "webhook_secret",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What to answer GitHub: an HTTP status and a JSON object."""

    status: int
    body: dict[str, Any]


def webhook_secret(settings: Settings) -> bytes | None:
    """The HMAC key, or None only under the explicit local opt-out.

    Refusing to start without a secret (rather than accepting unsigned deliveries) is the safe
    default: anybody who can reach the endpoint could otherwise queue builds.
    """
    if settings.webhook_secret:
        if len(settings.webhook_secret) < WEBHOOK_SECRET_MIN_CHARS:
            # The length only, never the value: this line is printed and logged.
            raise ConfigurationError(
                f"GITHUB_WEBHOOK_SECRET is {len(settings.webhook_secret)} characters long: use"
                f" at least {WEBHOOK_SECRET_MIN_CHARS} characters (e.g. `openssl rand -hex 32`)"
                " and set the same secret in GitHub's webhook settings"
            )
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


class AppRequestHandler(Protocol):
    """A GitHub App's own deliveries (scheduler.github.app_mode.AppRequests)."""

    def handle(
        self, request: CheckRunRequest | CheckSuiteRequest | InstallationChange
    ) -> WebhookAnswer: ...

    def uninstalled(self, repo: str) -> bool: ...


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
        github_host: str = DEFAULT_GITHUB_HOST,
        app: AppRequestHandler | None = None,
    ) -> None:
        self._store = store
        # GitHub App mode: its check run, check suite and installation deliveries are acted on.
        self._app = app
        self._config = config
        self._secret = secret
        self._clock = clock
        self._guard_window_ms = guard_window_ms
        # The only host a payload's clone URL may name (the token's host; see clone_urls).
        self._github_host = github_host

    def receive(self, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        # The signature first: an unauthenticated caller learns nothing about what we accept.
        if self._secret is not None:
            verify_signature(self._secret, body, headers.get(SIGNATURE_HEADER))
        delivery = parse_delivery(headers, body)
        wanted = interpret(
            delivery, github_host=self._github_host, app_events=self._app is not None
        )
        if isinstance(wanted, Ping):
            return WebhookAnswer(200, {"reason": "pong"})
        if isinstance(wanted, CheckRunRequest | CheckSuiteRequest | InstallationChange):
            assert self._app is not None  # read only in App mode
            return self._app.handle(wanted)
        if isinstance(wanted, BuildRequest):
            wanted = self._filter(wanted)
        if isinstance(wanted, ClosedPullRequest) and self._config.accepts(wanted.repo):
            self._withdraw_waiting(wanted)
        if isinstance(wanted, Ignored):
            log.info(
                "delivery ignored",
                extra={"delivery_id": delivery.delivery_id, "event": delivery.event},
            )
            return WebhookAnswer(202, {"reason": wanted.reason})
        return self._create(wanted)

    def _withdraw_waiting(self, closed: ClosedPullRequest) -> None:
        """Cancel the closed pull request's jobs that wait for approval (nobody will give it
        now): one guarded cancel each, so a redelivery, or an approval that won, changes
        nothing. Its approved or running jobs are left alone, as a close never stopped them."""
        waiting = self._store.reads.unfinished_in_lane(
            closed.repo,
            JobModel.pr_number == closed.pr_number,
            with_active=False,
            with_pending=False,
            with_waiting=True,
        )
        for model in waiting:
            try:
                self._store.transition(
                    JobState.from_model(model),
                    Trigger.CANCEL,
                    actor="webhook",
                    outcome=Outcome(
                        reason="cancelled",
                        detail=f"pull request #{closed.pr_number} was closed unapproved",
                    ),
                )
            except TransitionConflict:
                continue  # approved, superseded or cancelled meanwhile
            log.info(
                "waiting job withdrawn",
                extra={"job_id": model.job_id, "repo": closed.repo, "pr": closed.pr_number},
            )

    def _filter(self, build: BuildRequest) -> BuildRequest | Ignored:
        """The repository configuration's say: accepted repository, built branch or tag."""
        if not self._config.accepts(build.repo):
            return Ignored(f"repository {build.repo} is not accepted by the configuration")
        if self._app is not None and self._app.uninstalled(build.repo):
            return Ignored(f"the GitHub App was uninstalled from {build.repo}")
        policy = self._config.policy(build.repo)
        if build.tag is not None:
            if not policy.builds_tag(build.tag):
                return Ignored(f"tag {build.tag} is not built by the configuration")
            return build
        # A pull request is filtered by the branch it targets, a push by the branch it moves.
        branch = build.base_branch if build.pr_number is not None else build.branch
        if branch is not None and not policy.builds_branch(branch):
            return Ignored(f"branch {branch} is not built by the configuration")
        if build.fork and policy.fork_pull_requests == "skip":
            return Ignored(
                f"pull request #{build.pr_number} is from a fork, and the configuration skips"
                ' those (fork_pull_requests = "skip")'
            )
        return build

    def _create(self, build: BuildRequest) -> WebhookAnswer:
        policy = self._config.policy(build.repo)
        # A fork's pull request is someone else's code: by default it waits for an operator's
        # approval (`scheduler approve`) before it is queued at all.
        waits = build.fork and policy.fork_pull_requests == "approve"
        new = NewJob(
            job_id=build.job_id,
            repo=build.repo,
            event=build.event,
            sha=build.sha,
            timeout_seconds=policy.timeout_seconds,
            ref=build.ref,
            branch=build.branch,
            pr_number=build.pr_number,
            clone_url=build.clone_url,
            sender=build.sender,
            delivery_id=build.delivery_id,
            priority=policy.priority,
            trace_id=tracing.current_trace_id(),
            fork=build.fork,
            status=JobStatus.WAITING if waits else JobStatus.PENDING,
            # The commit's own pipeline file is read before the job runs (see PipelineDriver).
            pipeline_owed=policy.pipeline == "repo" and policy.checkout,
        )
        fields = {"job_id": new.job_id, "repo": new.repo, "delivery_id": new.delivery_id}
        try:
            create_guarded(
                self._store,
                new,
                build.trigger_key,
                now=self._clock(),
                guard_window_ms=self._guard_window_ms,
            )
        except JobExists:
            log.info("delivery already seen", extra=fields)
            return WebhookAnswer(200, {"job_id": new.job_id, "reason": "delivery already seen"})
        except TriggerSeen as seen:
            log.info("commit already queued", extra={**fields, "existing_job_id": seen.job_id})
            return WebhookAnswer(
                200,
                {
                    "job_id": seen.job_id,
                    "reason": "this commit is already queued for this trigger",
                },
            )
        log.info("job created", extra={**fields, "status": new.status.value})
        if waits:
            reason = "pull request from a fork: waiting for approval (scheduler approve JOB_ID)"
            return WebhookAnswer(202, {"job_id": new.job_id, "reason": reason})
        return WebhookAnswer(202, {"job_id": new.job_id})


def create_guarded(
    store: JobStore,
    new: NewJob,
    trigger_key: str,
    *,
    now: int,
    actor: str = "webhook",
    guard_window_ms: int = 30 * DAY_MS,
) -> JobState:
    """Write a new job (as ``new`` says: pending or waiting), count it and claim its trigger,
    all or nothing.

    Raises :class:`TriggerSeen` when another job holds the trigger, :class:`JobExists` when the
    job (this delivery) is already there.
    """
    return store.create(new, actor=actor, now=now, guard=TriggerGuard(trigger_key, guard_window_ms))
