"""GitHub App mode: one App per process (credentials, check runs, their send queue) and what
its own deliveries do.

Made from :class:`~scheduler.settings.Settings` when ``SCHEDULER_GITHUB_APP_ID`` and the key
are set, once per process (:func:`github_app`), so the stream's check runs and the webhook's
re-run requests share one token cache and one queue. :func:`attach` adds the check run
observer to a core; :func:`app_requests_for` gives the webhook what it needs to honour
GitHub's Re-run buttons and the check runs' Approve and run / Cancel buttons.

Each request is honoured only for a sender with write permission on the repository (asked of
``GET /repos/{repo}/collaborators/{login}/permission``, cached for a minute); a refusal says
why on the check run. Each goes through the store's guarded transitions
(:class:`~scheduler.runs.operations.Operations`), so a double click, a redelivery or five
concurrent deliveries make one new attempt: the others lose the conditional write.

The repositories an installation gains or loses are kept in the repos table
(:mod:`scheduler.db.installations`), so every process (each function on AWS) sees a change
whichever process received it, within a few seconds' cache; changes are ordered by their own
time, so a redelivered or late one cannot undo a newer one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scheduler.config import RepositoryConfig
from scheduler.db.installations import Installations, RepoInstallation
from scheduler.db.queries import JobFilter, Queries
from scheduler.db.store import JobStore
from scheduler.errors import DomainError, JobNotFound, RerunRefused
from scheduler.github.api import GitHubApi
from scheduler.github.app_auth import AppAuth
from scheduler.github.app_events import (
    CheckRunRequest,
    CheckSuiteRequest,
    InstallationChange,
    external_id,
)
from scheduler.github.checks import (
    APPROVE_ACTION,
    CANCEL_ACTION,
    CheckRunObserver,
    CheckRuns,
    CheckState,
    merge,
)
from scheduler.github.delivery import WebhookAnswer
from scheduler.github.rate_limits import SendQueue
from scheduler.github.statuses import CommitStatusObserver, GitHubNotifier
from scheduler.runs.operations import Operations
from scheduler.settings import Settings
from state_machines import InvalidTransition, JobStatus, TransitionConflict

if TYPE_CHECKING:
    from scheduler.stream.decide import TransitionObserver
    from scheduler.wiring import Core

__all__ = [
    "AppRequests",
    "GitHubApp",
    "Permissions",
    "app_requests_for",
    "attach",
    "github_app",
    "tokens_bought",
]

log = logging.getLogger(__name__)

WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
PERMISSION_TTL_SECONDS = 60.0
LOG_TAIL_LINES = 400
ACTOR = "github"


class Permissions:
    """Whether a GitHub user may write to a repository, asked of GitHub, cached briefly."""

    def __init__(
        self,
        api: GitHubApi,
        auth: AppAuth,
        *,
        ttl_seconds: float = PERMISSION_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._auth = auth
        self._ttl = ttl_seconds
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def permission(self, repo: str, login: str) -> str:
        key = (repo.lower(), login.lower())
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[1] > self._clock():
            return known[0]
        answer = self._api.request(
            "GET",
            f"/repos/{repo}/collaborators/{login}/permission",
            authorization=self._auth.authorization_for(repo),
        )
        found = answer.get("permission") if isinstance(answer, dict) else None
        permission = found if isinstance(found, str) else "none"
        with self._lock:
            self._known[key] = (permission, self._clock() + self._ttl)
        return permission

    def may_write(self, repo: str, login: str | None) -> bool:
        return login is not None and self.permission(repo, login) in WRITE_PERMISSIONS


class InstalledRepos:
    """What installations gave and took away, kept for every process (the repos table)."""

    def __init__(
        self,
        installations: Callable[[], Installations],
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._make = installations
        self._made: Installations | None = None
        self._lock = threading.Lock()
        self._wall_us = wall_us

    @property
    def installations(self) -> Installations:
        with self._lock:  # made on first use: a process that never asks pays no client
            if self._made is None:
                self._made = self._make()
            return self._made

    def apply(self, change: InstallationChange, auth: AppAuth) -> tuple[list[str], list[str]]:
        """Keep what ``change`` says of each repository unless a newer change is known;
        the repositories it added and removed that now stand."""
        # A delivery that says nothing of its time is ordered by its arrival.
        at = change.order_at if change.order_at is not None else self._wall_us()
        added: list[str] = []
        removed: list[str] = []
        for repos, installed, kept in (
            (change.added, True, added),
            (change.removed, False, removed),
        ):
            for repo in repos:
                if self.installations.record(
                    RepoInstallation(
                        repo, installed, change.installation_id, at, change.delivery_id
                    )
                ):
                    kept.append(repo)
                    if installed:
                        auth.remember(repo, change.installation_id)
                    else:
                        auth.forget(repo)
        return added, removed

    def uninstalled(self, repo: str) -> bool:
        return self.installations.uninstalled(repo)


@dataclass
class GitHubApp:
    api: GitHubApi
    auth: AppAuth
    checks: CheckRuns
    queue: SendQueue[str, CheckState]
    permissions: Permissions
    installed: InstalledRepos
    dashboard_url: str

    def observer(
        self,
        name_for: Callable[[str], str],
        mask_for: Callable[[str], Callable[[str], str]] | None = None,
    ) -> CheckRunObserver:
        return CheckRunObserver(self.queue, name_for, self.dashboard_url, mask_for)

    def close(self) -> None:
        self.queue.close()


_APPS: dict[tuple[str, str, str], GitHubApp] = {}
_APPS_LOCK = threading.Lock()


def github_app(settings: Settings) -> GitHubApp | None:
    """This process's App for ``settings`` (made once), or None when App mode is off."""
    if not settings.github_app_id or not settings.github_app_private_key:
        return None
    dashboard = settings.dashboard_url or f"http://{settings.http_host}:{settings.http_port}"
    key = (settings.github_app_id, settings.github_api_url, dashboard)
    with _APPS_LOCK:
        made = _APPS.get(key)
        if made is not None:
            return made
        api = GitHubApi(settings.github_api_url)
        auth = AppAuth(settings.github_app_id, settings.github_app_private_key, api)
        checks = CheckRuns(api, auth)
        # On Lambda the updates of one invocation are merged per job and sent before it
        # returns (Core.end_invocation: a frozen sandbox's thread would lose them), so a
        # batch that moves a job queued -> in progress -> completed makes one request;
        # elsewhere one worker sends, merging a second's changes.
        queue: SendQueue[str, CheckState] = SendQueue(
            checks.send,
            merge,
            window_seconds=math.inf if settings.on_lambda else 1.0,
            background=not settings.on_lambda,
            pause=api.pause_seconds,
        )
        made = GitHubApp(
            api=api,
            auth=auth,
            checks=checks,
            queue=queue,
            permissions=Permissions(api, auth),
            installed=InstalledRepos(lambda: Installations.from_settings(settings)),
            dashboard_url=dashboard.rstrip("/"),
        )
        _APPS[key] = made
        return made


def tokens_bought() -> tuple[str, ...]:
    """The installation tokens every App of this process bought (masked in run output)."""
    with _APPS_LOCK:
        apps = list(_APPS.values())
    return tuple(token for app in apps for token in app.auth.bought())


def attach(core: Core) -> None:
    """Add the App's check runs to ``core`` (nothing when App mode is off)."""
    app = github_app(core.settings)
    if app is None:
        return
    from scheduler.wiring import mask_for_settings  # the composition root imports this module

    logs = core.logs
    if logs is not None:
        app.checks.log_tail = lambda job_id: logs.tail(core.queries.job(job_id), LOG_TAIL_LINES)
    observer = app.observer(
        lambda repo: core.config.policy(repo).status_context,
        mask_for_settings(core.settings, core.config),
    )
    added: tuple[TransitionObserver, ...] = (observer,)
    if core.notifier is None:
        # No personal token: commit statuses are posted with the installation token too.
        core.notifier = GitHubNotifier(
            "",
            api_url=core.settings.github_api_url,
            max_workers=0 if core.settings.on_lambda else 2,
            authorization_for=app.auth.authorization_for,
        )
        statuses = CommitStatusObserver(
            core.notifier,
            lambda repo: core.config.policy(repo).status_context,
            f"{app.dashboard_url}/ui/jobs/{{job_id}}",
            mask_for=mask_for_settings(core.settings, core.config),
        )
        added = (statuses, observer)
    core.dispatcher.observers = (*core.dispatcher.observers, *added)
    core.observers = (*core.observers, *added)
    if core.settings.on_lambda:
        core.at_invocation_end.append(app.queue.flush)
    closing = core.close

    def close() -> None:  # what is still queued for GitHub is sent before the core goes
        closing()
        app.queue.flush()

    core.close = close  # type: ignore[method-assign]


def with_github_app(build: Callable[..., Core]) -> Callable[..., Core]:
    """``build_core`` that also attaches the App (the composition root's one hook)."""

    def built(*args: Any, **kwargs: Any) -> Core:
        core = build(*args, **kwargs)
        attach(core)
        return core

    built.__doc__ = build.__doc__
    built.__wrapped__ = build  # type: ignore[attr-defined]
    return built


# -- the App's deliveries ------------------------------------------------------------------------


class AppRequests:
    """What the App's own deliveries do: re-runs, approvals, cancels, installations."""

    def __init__(
        self, app: GitHubApp, store: JobStore, queries: Queries, config: RepositoryConfig
    ) -> None:
        self._app = app
        self._store = store
        self._queries = queries
        self._config = config

    def uninstalled(self, repo: str) -> bool:
        return self._app.installed.uninstalled(repo)

    def handle(
        self, request: CheckRunRequest | CheckSuiteRequest | InstallationChange
    ) -> WebhookAnswer:
        if isinstance(request, InstallationChange):
            added, removed = self._app.installed.apply(request, self._app.auth)
            older = len(request.added) + len(request.removed) - len(added) - len(removed)
            log.info(
                "installation changed",
                extra={
                    "installation_id": request.installation_id,
                    "added": len(added),
                    "removed": len(removed),
                    "older": older,
                },
            )
            reason = "installation updated"
            if older:
                reason += f" ({older} repositories left as a newer change says)"
            return WebhookAnswer(202, {"reason": reason, "added": added, "removed": removed})
        if request.installation_id is not None:
            self._app.auth.remember(request.repo, request.installation_id)
        if not self._config.accepts(request.repo) or self.uninstalled(request.repo):
            return WebhookAnswer(202, {"reason": f"repository {request.repo} is not built here"})
        if not self._may_write(request.repo, request.sender):
            return self._refuse(request)
        if isinstance(request, CheckSuiteRequest):
            return self._rerun_suite(request)
        return self._check_run(request)

    def _may_write(self, repo: str, login: str | None) -> bool:
        try:
            return self._app.permissions.may_write(repo, login)
        except DomainError as exc:  # GitHub unreachable: no permission is assumed
            log.warning("permission not known", extra={"repo": repo, "problem": str(exc)})
            return False

    def _refuse(self, request: CheckRunRequest | CheckSuiteRequest) -> WebhookAnswer:
        who = f"@{request.sender}" if request.sender else "The sender"
        reason = (
            f"{who} has no write permission on {request.repo}: only people who may push to it"
            " can re-run, approve or cancel its checks"
        )
        if isinstance(request, CheckRunRequest):
            try:
                self._app.checks.update(
                    request.repo,
                    request.check_run_id,
                    {"output": {"title": "Request refused", "summary": reason}},
                )
            except DomainError as exc:  # the refusal stands even if GitHub does not hear why
                log.warning("refusal not shown", extra={"repo": request.repo, "problem": str(exc)})
        log.info("app request refused", extra={"repo": request.repo, "sender": request.sender})
        return WebhookAnswer(202, {"reason": reason})

    def _check_run(self, request: CheckRunRequest) -> WebhookAnswer:
        operations = Operations(self._store, self._queries, actor=ACTOR)
        job_id = request.job_id
        try:
            # A check run acts on its own repository's jobs only, whatever its external id says.
            if self._store.state(job_id).repo.lower() != request.repo.lower():
                return WebhookAnswer(202, {"reason": f"job {job_id} is not of {request.repo}"})
            if request.action == "rerequested":
                current = self._current_check_run(request)
                if current is not None and current != request.check_run_id:
                    # An older check run of the job: it was re-run already.
                    return WebhookAnswer(200, {"job_id": job_id, "reason": "already re-run"})
                # A step's Re-run: it and what follows it; a pipeline run's: its failed steps.
                changed = operations.rerun(job_id)
            elif request.identifier == APPROVE_ACTION:
                changed = operations.approve(job_id)
            elif request.identifier == CANCEL_ACTION:
                changed = operations.cancel(job_id)
            else:
                return WebhookAnswer(202, {"reason": f"unknown action {request.identifier!r}"})
        except JobNotFound:
            return WebhookAnswer(202, {"reason": f"job {job_id} does not exist"})
        except (TransitionConflict, InvalidTransition, RerunRefused) as lost:
            # A double click, a redelivery or a concurrent delivery did it first (or the job
            # is not in a state the button applies to): nothing more is done.
            return WebhookAnswer(200, {"job_id": job_id, "reason": str(lost)})
        log.info(
            "app request honoured",
            extra={"job_id": job_id, "action": request.action, "sender": request.sender},
        )
        return WebhookAnswer(
            202, {"job_id": job_id, "status": changed.status, "attempt": changed.attempt}
        )

    def _current_check_run(self, request: CheckRunRequest) -> int | None:
        """The job's newest check run: known here if this process made it, else asked of
        GitHub (the webhook and the stream are different processes on AWS). A Re-run of an
        older one (a redelivery after the re-run began) then changes nothing."""
        known = self._app.checks.current(external_id(request.job_id))
        if known is not None or request.head_sha is None or request.name is None:
            return known
        try:
            return self._app.checks.newest(
                request.repo, request.head_sha, request.name, request.job_id
            )
        except DomainError:  # not known: the guarded retry still makes at most one attempt
            return None

    def _rerun_suite(self, request: CheckSuiteRequest) -> WebhookAnswer:
        """One new attempt per failed job of the suite's commit, however often it is asked.

        Concurrent deliveries (five clicks, a redelivery racing the first) race for each job's
        guarded retry: one wins. A delivery that comes after its re-run failed again (GitHub
        redelivers it, or it was late) finds the job's failure newer than the click, by the
        time GitHub made the delivery (the same on every redelivery): answered already. As
        with ``check_run``'s newer check run, a later click (a delivery made later) re-runs.
        """
        operations = Operations(self._store, self._queries, actor=ACTOR)
        # A failed pipeline run stands for its failed steps (its re-run re-runs them).
        failed = [
            job
            for job in self._queries.iter_jobs(request.repo, JobFilter(status=JobStatus.FAILED))
            if job.sha == request.head_sha and job.run_of is None
        ]
        retried = []
        answered = []
        for job in failed:
            if (
                request.asked_at_ms is not None
                and job.finished_at is not None
                and job.finished_at > request.asked_at_ms
            ):
                answered.append(job.job_id)  # failed again after this click re-ran it
                continue
            try:
                retried.append(operations.rerun(job.job_id).job_id)
            except (TransitionConflict, InvalidTransition, RerunRefused, JobNotFound):
                continue  # re-run meanwhile
        body: dict[str, Any] = {"retried": retried}
        if not retried:
            body["reason"] = (
                "already re-run" if answered or failed else "no failed job of this commit"
            )
        return WebhookAnswer(202 if retried else 200, body)


def app_requests_for(
    settings: Settings, store: JobStore, config: RepositoryConfig
) -> AppRequests | None:
    """The webhook's handler of the App's deliveries (None when App mode is off)."""
    app = github_app(settings)
    if app is None:
        return None
    return AppRequests(app, store, Queries.from_settings(settings), config)
