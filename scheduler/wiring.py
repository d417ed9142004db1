"""The one composition root: builds the core from :class:`Settings` for either runtime.

Both runtimes call :func:`build_core` and differ only in what they pass in: how a run is
executed (a local process pool, a CodeBuild project, or nothing for a CLI process), and who
claims it (:mod:`scheduler.runs.claims`: one small interface, one implementation each). Everything
else — the repository configuration, the dispatcher with its slot limits, retry policies and
observers, the webhook service, the run starter, the reaper, the HTTP app — is made here, once,
so the Lambda functions and ``scheduler up`` cannot drift apart (a test compares their graphs).
Nothing here imports :mod:`scheduler.aws` or :mod:`scheduler.local`; the HTTP app (Jinja2),
commit statuses and App mode (httpx) are imported where they are first made, so a Lambda
function loads only what it uses (the reaper serves no HTTP and posts nothing to GitHub).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, wraps
from typing import TYPE_CHECKING, Any, cast

from scheduler import metrics, tracing
from scheduler.config import RepositoryConfig, load_config
from scheduler.db import models
from scheduler.db.queries import Queries
from scheduler.db.store import JobStore
from scheduler.errors import ConfigurationError
from scheduler.pipelines import PipelineFileReader
from scheduler.runs.claims import ClaimAtStart, RunClaims
from scheduler.runs.executor import Executor, OnFinished, RunResult, Source
from scheduler.runs.logs import LogReader, RunLogs
from scheduler.runs.masking import Masker, masker_for, pem_secrets
from scheduler.runs.operations import Operations
from scheduler.runs.pipeline_driver import PipelineDriver
from scheduler.runs.reaper import Reaper
from scheduler.runs.reservations import Reservations
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.stream.decide import TransitionObserver
from scheduler.stream.dispatcher import Dispatcher
from scheduler.stream.full_repos import FullRepos
from scheduler.stream.reconciler import Reconciler
from scheduler.stream.sweeper import QueueSweeper

if TYPE_CHECKING:
    from scheduler.api.app import Application, Router
    from scheduler.api.auth import ApiAuth
    from scheduler.github.statuses import GitHubNotifier

__all__ = ["Core", "ExecutorFactory", "build_core", "mask_for_settings"]

ExecutorFactory = Callable[[OnFinished], Executor]
"""Makes the runtime's executor, given where a finished run reports its result."""


@dataclass
class Core:
    """The scheduler's object graph for one process (a Lambda cold start, ``scheduler up``)."""

    settings: Settings
    config: RepositoryConfig
    store: JobStore
    queries: Queries
    dispatcher: Dispatcher
    reaper: Reaper
    runs: RunStarter | None = None
    notifier: GitHubNotifier | None = None
    observers: tuple[TransitionObserver, ...] = field(default=())
    # Run output (the log route): read through the runtime's reader, masked per repository.
    logs: RunLogs | None = None
    # What must be done before a Lambda invocation returns (its sandbox is frozen after):
    # sending what the batch queued for GitHub (App mode's check runs, merged per job).
    at_invocation_end: list[Callable[[], object]] = field(default_factory=list)

    @cached_property
    def sweeper(self) -> QueueSweeper:
        """Re-drives stalled queues (a part of the reconciliation)."""
        return QueueSweeper(self.store, self.dispatcher.promote)

    @cached_property
    def reconciler(self) -> Reconciler:
        """The backstop beside the reaper on both runtimes (the reaper's function on AWS, the
        stack's reaper loop locally): frees held slots once their runs are known stopped
        (asked of this runtime's executor), makes the retries lost failure records owed, moves
        on the pipeline runs whose steps' records were lost and sweeps stalled queues."""
        executor = self.runs.executor if self.runs is not None else None
        return Reconciler(
            self.store,
            self.dispatcher.promote,
            self.sweeper,
            executor,
            redrive=self.dispatcher.redrive_failed,
            settle_run=self.dispatcher.settle_run,
        )

    @cached_property
    def webhook_app(self) -> Application:
        """The webhook and health routes only: what a public URL may serve (AWS)."""
        from scheduler.api.app import create_app

        return create_app(self.settings, store=self.store, config=self.config)

    @cached_property
    def auth(self) -> ApiAuth:
        """Who may use the read routes, the dashboard and its buttons (both apps share it)."""
        from scheduler.api.auth import ApiAuth

        return ApiAuth(self.settings.api_token)

    def _read_routes(self) -> list[Callable[[Router], None]]:
        """The read routes and the dashboard (with its retry and cancel buttons)."""
        from scheduler.api.dashboard import Dashboard
        from scheduler.api.query_routes import query_routes

        logs = self.logs or RunLogs(self.queries, None)
        operations = Operations(self.store, self.queries, actor="dashboard")
        dashboard = Dashboard(self.queries, logs, operations, self.auth)
        return [query_routes(self.queries, self.logs), dashboard.register]

    @cached_property
    def query_app(self) -> Application:
        """The read routes and the dashboard, apart from the public webhook (AWS): its URL is
        public too (a browser cannot sign requests), so the API token is required."""
        if not self.settings.api_token:
            raise ConfigurationError(
                "the API needs a token on AWS: set SCHEDULER_API_TOKEN_ARN (the template's"
                " ApiTokenSecret) or SCHEDULER_API_TOKEN"
            )
        from scheduler.api.app import create_query_app
        from scheduler.api.dashboard import MAX_FORM_BYTES

        return create_query_app(
            self.settings, self._read_routes(), auth=self.auth, max_body_bytes=MAX_FORM_BYTES
        )

    @cached_property
    def http_app(self) -> Application:
        """The HTTP app (webhook, read routes, dashboard); made on first use, as only some
        processes serve HTTP, and it refuses to be made without a webhook secret."""
        from scheduler.api.app import create_app

        return create_app(
            self.settings,
            store=self.store,
            config=self.config,
            extra_routes=self._read_routes(),
            auth=self.auth,
        )

    def end_invocation(self) -> None:
        for finish in self.at_invocation_end:
            finish()

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()


def build_core(
    settings: Settings,
    *,
    executor: ExecutorFactory | None,
    config: RepositoryConfig | None = None,
    log_reader: LogReader | None = None,
    claims: RunClaims | None = None,
    pipeline_reader: Callable[[], PipelineFileReader] | None = None,
) -> Core:
    """The core for ``settings``; ``executor`` None means this process starts no runs;
    ``log_reader`` is how this runtime reads run output (None: the log route answers 404).

    ``claims``: who claims the runtime's runs (:mod:`scheduler.runs.claims`; by default the
    start does, :class:`ClaimAtStart`), chosen by each runtime's composition.
    ``pipeline_reader`` makes the runtime's reader of commits' pipeline files (by default
    GitHub's contents API); a process that starts no runs reads none.
    """
    claims = claims if claims is not None else ClaimAtStart()
    config = config if config is not None else load_config(settings.config_path)
    tracing.configure(settings.tracing)
    models.bind(settings)
    store = JobStore.from_settings(settings)
    # One clock and indexes that follow each write locally; on AWS the margin covers both.
    full_repos = FullRepos(margin_ms=claims.full_margin_ms)
    reservations = Reservations()  # jobs being activated here: hand-offs and promotions
    runs: RunStarter | None = None
    cancel_run: Callable[[str], None] | None = None
    run_stopped: Callable[[str], bool] | None = None
    if executor is not None:

        def finished(result: RunResult) -> None:  # the executor is made before the starter
            assert runs is not None
            runs.finished(result)

        def source_for(repo: str) -> Source:
            policy = config.policy(repo)
            return Source(
                policy.checkout,
                policy.clone_url,
                sandbox=policy.sandbox == "on",
                network=policy.network,
                sandbox_paths=policy.sandbox_paths,
                secrets=policy.secrets,
            )

        made = executor(finished)
        runs = RunStarter(
            store,
            made,
            lambda repo: config.policy(repo).command,
            source_for=source_for,
            # A claimed activation needs no write of its own: a finish can hand its slot on.
            hand_off_for=claims.hand_off_for(lambda repo: config.policy(repo).concurrency),
            reservations=reservations,
        )
        cancel_run = made.cancel
        run_stopped = made.stopped

    notifier: GitHubNotifier | None = None
    observers: list[TransitionObserver] = []
    if settings.github_token:
        from scheduler.github.statuses import CommitStatusObserver, GitHubNotifier

        notifier = GitHubNotifier(
            settings.github_token,
            api_url=settings.github_api_url,
            # On Lambda a status is posted before the invocation returns: a background
            # thread would be frozen with the sandbox, its post lost or late.
            max_workers=0 if settings.on_lambda else 2,
        )
        observers.append(
            CommitStatusObserver(
                notifier,
                lambda repo: config.policy(repo).status_context,
                mask_for=mask_for_settings(settings, config),
            )
        )

    observers.append(metrics.observe_transition)  # counts and timings (scheduler.metrics)
    dispatcher = Dispatcher(
        store,
        slot_limit_for=lambda repo: config.policy(repo).concurrency,
        retry_policy_for=lambda repo: config.policy(repo).retry,
        supersede_for=lambda repo: config.policy(repo).supersede,
        start_run=runs.start if runs is not None else None,
        claiming_starter=claims.claiming(runs) if runs is not None else None,
        stop_run=cancel_run,
        run_stopped=run_stopped,
        observers=observers,
        full_repos=full_repos,
        reservations=reservations,
        pipelines=PipelineDriver(
            store, pipeline_reader or _contents_reader(settings), config.policy
        )
        if runs is not None
        else None,
    )
    return Core(
        settings=settings,
        config=config,
        store=store,
        queries=Queries.from_settings(settings),
        dispatcher=dispatcher,
        reaper=Reaper(
            store,
            cancel_run=cancel_run,
            status_of=runs.executor.status if runs is not None else None,
            restart=runs.start if runs is not None else None,
            restart_claimed=claims.restart_claimed(runs) if runs is not None else None,
            settle=runs.settle if runs is not None else None,
            started_at=runs.executor.started_at if runs is not None else None,
            owns_claim=claims.owns_claim(runs) if runs is not None else None,
            start_grace_seconds=settings.start_grace_seconds,
        ),
        runs=runs,
        notifier=notifier,
        observers=tuple(observers),
        logs=RunLogs(
            Queries.from_settings(settings), log_reader, mask_for_settings(settings, config)
        ),
    )


def _contents_reader(settings: Settings) -> Callable[[], PipelineFileReader]:
    def make() -> PipelineFileReader:
        from scheduler.github.contents import contents_reader_for

        return contents_reader_for(settings)

    return make


def mask_for_settings(settings: Settings, config: RepositoryConfig) -> Callable[[str], Masker]:
    """Repository -> the masker of what its runs print: its ``mask_env`` variables, and the
    scheduler's own secrets (both runtimes' executors and readers use this one)."""
    return masker_for(
        lambda repo: config.policy(repo).mask_env,
        (
            settings.webhook_secret,
            settings.github_token,
            settings.cursor_secret,
            settings.api_token,
            *pem_secrets(settings.github_app_private_key),
        ),
        bought=_app_tokens_bought,
    )


def _app_tokens_bought() -> tuple[str, ...]:
    """The GitHub App's installation tokens this process bought. A process that never loaded
    App mode made no App, so bought none: it is not imported for the question (httpx)."""
    app_mode = sys.modules.get("scheduler.github.app_mode")
    if app_mode is None:
        return ()
    return cast("tuple[str, ...]", app_mode.tokens_bought())


def _with_github_app(build: Callable[..., Core]) -> Callable[..., Core]:
    """``build_core`` that also attaches the App's check runs (the composition root's one
    hook); :mod:`scheduler.github.app_mode` (httpx, PyJWT) is imported in App mode only."""

    @wraps(build)
    def built(*args: Any, **kwargs: Any) -> Core:
        core = build(*args, **kwargs)
        if core.settings.github_app_id:  # else attach() does nothing: not worth its imports
            from scheduler.github.app_mode import attach

            attach(core)
        return core

    return built


# GitHub App mode (SCHEDULER_GITHUB_APP_ID): check runs observed on both runtimes.
build_core = _with_github_app(build_core)
